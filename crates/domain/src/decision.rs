//! The check-in decision: given one workstation, the approvals of its installed versions and the
//! organization's rollouts, say per product whether to do nothing, offer or require an update, or
//! block the installed version.
//!
//! Rules (also in the README):
//! - A release reaches a workstation only through a rollout that targets it and has started, and
//!   only if the release is approved in the workstation's organization.
//! - When several such rollouts target the same product, one is effective: the one that started
//!   last; at an equal start an explicit workstation list beats a group or `all`; then the higher
//!   id. Cancelled rollouts and rollouts not started yet do not count; a paused one does, and
//!   delivers nothing until it is resumed.
//! - With waves, the effective rollout delivers only once the workstation's wave is open.
//! - An update is never the installed version, and never older unless the rollout allows it.
//! - An update is required when the rollout is mandatory, when its deadline has passed for this
//!   workstation, or when the installed version is blocked; otherwise it is offered, with the
//!   deadline when there is one.
//! - An installed version that is disapproved is blocked (code 2028), whatever else applies.

use std::collections::{BTreeMap, BTreeSet};

use semver::{Version, VersionReq};

use crate::rollout::{DeadlineRule, MaintenanceWindow, RolloutState, placement, wave_by_cuts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    Pending,
    Approved,
    Disapproved,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub all: bool,
    /// A set: a rollout may name many thousands of workstations, and every check-in asks.
    pub workstations: BTreeSet<String>,
    pub groups: Vec<String>,
}

/// How a rollout reaches a workstation; higher is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    Broad,
    Explicit,
}

impl Targets {
    fn matches(&self, workstation: &WorkstationView<'_>) -> Option<Match> {
        if self.workstations.contains(workstation.id) {
            Some(Match::Explicit)
        } else if self.all || self.groups.iter().any(|g| workstation.groups.contains(g)) {
            Some(Match::Broad)
        } else {
            None
        }
    }

    /// Whether the rollout targets this workstation at all.
    pub fn includes(&self, id: &str, groups: &[String]) -> bool {
        self.all || self.workstations.contains(id) || self.groups.iter().any(|g| groups.contains(g))
    }
}

#[derive(Debug, Clone)]
pub struct RolloutView {
    pub id: i64,
    pub product: String,
    pub version: Version,
    /// The target release's approval in the workstation's organization.
    pub approval: Approval,
    pub mandatory: bool,
    pub state: RolloutState,
    pub targets: Targets,
    /// Unix milliseconds.
    pub starts_at: i64,
    /// The wave cuts (see [`crate::wave_cuts`]) and how many waves are open; `None` is one wave
    /// of 100%.
    pub waves: Option<(Vec<u64>, u32)>,
    pub deadline: Option<DeadlineRule>,
    pub allow_downgrade: bool,
    pub window: Option<MaintenanceWindow>,
    /// Other products the release needs installed, at matching versions.
    pub requires: Vec<(String, VersionReq)>,
}

#[derive(Debug, Clone, Copy)]
pub struct WorkstationView<'a> {
    pub id: &'a str,
    pub groups: &'a [String],
    pub installed: &'a BTreeMap<String, Version>,
    /// Approval of each installed version in the workstation's organization, where upkeep knows it.
    pub installed_approvals: &'a BTreeMap<String, Approval>,
    /// When each rollout first offered this workstation its update (rollout id → Unix ms).
    pub first_offered: &'a BTreeMap<i64, i64>,
    /// The workstation's clock offset from UTC, for local deadlines and maintenance windows.
    pub utc_offset_minutes: i32,
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// Code 2028.
    Disapproved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredReason {
    Mandatory,
    DeadlinePassed,
    InstalledVersionBlocked,
}

impl RequiredReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RequiredReason::Mandatory => "mandatory",
            RequiredReason::DeadlinePassed => "deadline_passed",
            RequiredReason::InstalledVersionBlocked => "installed_version_blocked",
        }
    }
}

/// Whether unattended installs may happen now, for rollouts with a maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub window: String,
    pub open: bool,
    /// Now when open, else when it next opens.
    pub next_open: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateDecision {
    pub rollout_id: i64,
    pub version: Version,
    pub mandatory: bool,
    /// Set when the update must be installed before the product is used again.
    pub required: Option<RequiredReason>,
    /// When an offered update becomes required, for this workstation.
    pub deadline: Option<i64>,
    pub window: Option<WindowState>,
    /// 0-based wave of this workstation in the rollout.
    pub wave: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDecision {
    pub product: String,
    pub installed: Option<Version>,
    pub block: Option<BlockReason>,
    pub update: Option<UpdateDecision>,
    /// Why the rollout's update is held back (a required product is missing or too old).
    pub held_back: Option<String>,
}

/// The rollout that governs `product` on this workstation, if any (whether or not it delivers).
pub fn effective_rollout<'r>(
    workstation: &WorkstationView<'_>,
    product: &str,
    rollouts: &'r [RolloutView],
) -> Option<&'r RolloutView> {
    rollouts
        .iter()
        .filter(|r| {
            r.product == product
                && r.approval == Approval::Approved
                && now_counts(r.state, r.starts_at, workstation.now)
        })
        .filter_map(|r| r.targets.matches(workstation).map(|m| (r, m)))
        .max_by_key(|(r, m)| (r.starts_at, *m, r.id))
        .map(|(r, _)| r)
}

fn now_counts(state: RolloutState, starts_at: i64, now: i64) -> bool {
    match state {
        RolloutState::Cancelled => false,
        // A paused rollout holds its workstations, once it has started.
        RolloutState::Paused => now >= starts_at,
        _ => now >= starts_at,
    }
}

/// One decision per product that is installed on the workstation or targeted at it, by name.
pub fn decide(workstation: &WorkstationView<'_>, rollouts: &[RolloutView]) -> Vec<ProductDecision> {
    let products: BTreeSet<&str> = workstation
        .installed
        .keys()
        .map(String::as_str)
        .chain(rollouts.iter().map(|r| r.product.as_str()))
        .collect();

    let mut decisions = Vec::new();
    for product in products {
        let installed = workstation.installed.get(product);
        let block = match workstation.installed_approvals.get(product) {
            Some(Approval::Disapproved) if installed.is_some() => Some(BlockReason::Disapproved),
            _ => None,
        };
        let effective = effective_rollout(workstation, product, rollouts);

        // Targeted products that are not installed and have no rollout in effect say nothing.
        if installed.is_none() && effective.is_none() {
            continue;
        }

        let mut update = effective.and_then(|r| deliver(workstation, r, installed, block.is_some()));
        let held_back = match (effective, &update) {
            (Some(r), Some(_)) => unmet_requirement(workstation, &r.requires),
            _ => None,
        };
        if held_back.is_some() {
            update = None;
        }
        decisions.push(ProductDecision {
            product: product.to_owned(),
            installed: installed.cloned(),
            block,
            update,
            held_back,
        });
    }
    decisions
}

/// The first requirement the workstation does not meet, said for a person.
fn unmet_requirement(workstation: &WorkstationView<'_>, requires: &[(String, VersionReq)]) -> Option<String> {
    requires
        .iter()
        .find_map(|(product, requirement)| match workstation.installed.get(product) {
            Some(version) if requirement.matches(version) => None,
            Some(version) => Some(format!("needs {product} {requirement}; {version} is installed")),
            None => Some(format!("needs {product} {requirement}; it is not installed")),
        })
}

fn deliver(
    workstation: &WorkstationView<'_>,
    rollout: &RolloutView,
    installed: Option<&Version>,
    blocked: bool,
) -> Option<UpdateDecision> {
    if !rollout.state.delivers(rollout.starts_at, workstation.now) {
        return None;
    }
    let wave = match &rollout.waves {
        Some((cuts, opened)) => {
            let wave = wave_by_cuts(cuts, placement(rollout.id, workstation.id));
            if wave >= *opened {
                return None;
            }
            wave
        }
        None => 0,
    };
    match installed {
        Some(v) if rollout.version == *v => return None,
        Some(v) if rollout.version < *v && !rollout.allow_downgrade => return None,
        _ => {}
    }
    let deadline = rollout.deadline.and_then(|d| {
        d.instant(
            workstation.utc_offset_minutes,
            workstation.first_offered.get(&rollout.id).copied(),
        )
    });
    let required = if blocked {
        Some(RequiredReason::InstalledVersionBlocked)
    } else if rollout.mandatory {
        Some(RequiredReason::Mandatory)
    } else if deadline.is_some_and(|d| workstation.now >= d) {
        Some(RequiredReason::DeadlinePassed)
    } else {
        None
    };
    let window = rollout.window.as_ref().map(|w| WindowState {
        window: w.as_str().to_owned(),
        open: w.is_open(workstation.now, workstation.utc_offset_minutes),
        next_open: w.next_open(workstation.now, workstation.utc_offset_minutes),
    });
    Some(UpdateDecision {
        rollout_id: rollout.id,
        version: rollout.version.clone(),
        mandatory: rollout.mandatory,
        required,
        deadline,
        window,
        wave,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::LocalDateTime;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn rollout(id: i64, version: &str, approval: Approval, targets: Targets) -> RolloutView {
        RolloutView {
            id,
            product: "demo".into(),
            version: v(version),
            approval,
            mandatory: false,
            state: RolloutState::Active,
            targets,
            starts_at: id,
            waves: None,
            deadline: None,
            allow_downgrade: false,
            window: None,
            requires: Vec::new(),
        }
    }

    fn all() -> Targets {
        Targets {
            all: true,
            ..Targets::default()
        }
    }

    struct Ws {
        installed: BTreeMap<String, Version>,
        approvals: BTreeMap<String, Approval>,
        first_offered: BTreeMap<i64, i64>,
        groups: Vec<String>,
        offset: i32,
        now: i64,
    }

    impl Ws {
        fn new(installed: &[(&str, &str)]) -> Self {
            Ws {
                installed: installed.iter().map(|(p, ver)| (p.to_string(), v(ver))).collect(),
                approvals: BTreeMap::new(),
                first_offered: BTreeMap::new(),
                groups: vec!["lab".to_string()],
                offset: 0,
                now: NOW,
            }
        }

        fn decide(&self, rollouts: &[RolloutView]) -> Vec<ProductDecision> {
            let view = WorkstationView {
                id: "ws1",
                groups: &self.groups,
                installed: &self.installed,
                installed_approvals: &self.approvals,
                first_offered: &self.first_offered,
                utc_offset_minutes: self.offset,
                now: self.now,
            };
            decide(&view, rollouts)
        }
    }

    fn run(
        installed: &[(&str, &str)],
        approvals: &[(&str, Approval)],
        rollouts: &[RolloutView],
    ) -> Vec<ProductDecision> {
        let mut ws = Ws::new(installed);
        ws.approvals = approvals.iter().map(|(p, a)| (p.to_string(), *a)).collect();
        ws.decide(rollouts)
    }

    fn update(d: &[ProductDecision]) -> Option<&UpdateDecision> {
        d.first().and_then(|d| d.update.as_ref())
    }

    #[test]
    fn approved_rollout_is_offered() {
        let d = run(&[], &[], &[rollout(1, "1.0.0", Approval::Approved, all())]);
        assert_eq!(d.len(), 1);
        assert_eq!(update(&d).map(|u| u.version.clone()), Some(v("1.0.0")));
        assert_eq!(update(&d).and_then(|u| u.required), None);
    }

    #[test]
    fn unapproved_rollout_is_not_offered() {
        for approval in [Approval::Pending, Approval::Disapproved] {
            let d = run(&[], &[], &[rollout(1, "1.0.0", approval, all())]);
            assert!(d.is_empty(), "{approval:?} offered");
        }
    }

    #[test]
    fn no_downgrade_unless_allowed_and_nothing_when_up_to_date() {
        let mut older = rollout(1, "1.0.0", Approval::Approved, all());
        let d = run(&[("demo", "1.1.0")], &[], std::slice::from_ref(&older));
        assert_eq!(update(&d), None);
        older.allow_downgrade = true;
        let d = run(&[("demo", "1.1.0")], &[], &[older]);
        assert_eq!(update(&d).map(|u| u.version.clone()), Some(v("1.0.0")));
        let d = run(
            &[("demo", "1.0.0")],
            &[],
            &[rollout(1, "1.0.0", Approval::Approved, all())],
        );
        assert_eq!(update(&d), None);
    }

    #[test]
    fn disapproved_installed_is_blocked_and_the_fix_required() {
        let d = run(
            &[("demo", "1.0.0")],
            &[("demo", Approval::Disapproved)],
            &[rollout(1, "1.0.1", Approval::Approved, all())],
        );
        assert_eq!(d[0].block, Some(BlockReason::Disapproved));
        assert_eq!(
            update(&d).and_then(|u| u.required),
            Some(RequiredReason::InstalledVersionBlocked)
        );
    }

    #[test]
    fn targets_by_group_and_id() {
        let group = Targets {
            groups: vec!["lab".into()],
            ..Targets::default()
        };
        let other = Targets {
            groups: vec!["office".into()],
            workstations: BTreeSet::from(["ws2".into()]),
            ..Targets::default()
        };
        assert_eq!(
            run(&[], &[], &[rollout(1, "1.0.0", Approval::Approved, group)]).len(),
            1
        );
        assert!(run(&[], &[], &[rollout(1, "1.0.0", Approval::Approved, other)]).is_empty());
    }

    #[test]
    fn newest_start_wins_then_explicit_then_id() {
        let explicit = Targets {
            workstations: BTreeSet::from(["ws1".into()]),
            ..Targets::default()
        };
        let mut older = rollout(5, "2.0.0", Approval::Approved, explicit.clone());
        older.starts_at = 1;
        let mut newer = rollout(2, "1.5.0", Approval::Approved, all());
        newer.starts_at = 10;
        assert_eq!(
            update(&run(&[], &[], &[older.clone(), newer.clone()])).map(|u| u.rollout_id),
            Some(2)
        );
        newer.starts_at = 1;
        assert_eq!(
            update(&run(&[], &[], &[older.clone(), newer.clone()])).map(|u| u.rollout_id),
            Some(5)
        );
        let mut twin = rollout(7, "2.1.0", Approval::Approved, explicit);
        twin.starts_at = 1;
        assert_eq!(
            update(&run(&[], &[], &[older, newer, twin])).map(|u| u.rollout_id),
            Some(7)
        );
    }

    #[test]
    fn scheduled_paused_and_cancelled() {
        let mut r = rollout(1, "1.0.0", Approval::Approved, all());
        r.state = RolloutState::Scheduled;
        r.starts_at = NOW + 1;
        assert!(
            run(&[], &[], std::slice::from_ref(&r)).is_empty(),
            "not before its start"
        );
        r.starts_at = NOW;
        assert!(
            update(&run(&[], &[], std::slice::from_ref(&r))).is_some(),
            "from its start"
        );

        // A paused newer rollout holds the workstation: the older one does not take over.
        let older = rollout(1, "1.0.0", Approval::Approved, all());
        let mut paused = rollout(2, "1.1.0", Approval::Approved, all());
        paused.state = RolloutState::Paused;
        assert_eq!(update(&run(&[], &[], &[older.clone(), paused.clone()])), None);
        // Paused before its start, it does not count yet.
        let mut future = paused.clone();
        future.starts_at = NOW + DAY;
        assert_eq!(
            update(&run(&[], &[], &[older.clone(), future])).map(|u| u.rollout_id),
            Some(1)
        );
        paused.state = RolloutState::Cancelled;
        assert_eq!(update(&run(&[], &[], &[older, paused])).map(|u| u.rollout_id), Some(1));
    }

    #[test]
    fn mandatory_and_deadlines() {
        let mut r = rollout(1, "1.0.0", Approval::Approved, all());
        r.mandatory = true;
        assert_eq!(
            update(&run(&[], &[], std::slice::from_ref(&r))).and_then(|u| u.required),
            Some(RequiredReason::Mandatory)
        );

        r.mandatory = false;
        r.deadline = Some(DeadlineRule::At(NOW + DAY));
        let d = run(&[], &[], std::slice::from_ref(&r));
        assert_eq!(update(&d).and_then(|u| u.deadline), Some(NOW + DAY));
        assert_eq!(update(&d).and_then(|u| u.required), None);
        r.deadline = Some(DeadlineRule::At(NOW));
        assert_eq!(
            update(&run(&[], &[], std::slice::from_ref(&r))).and_then(|u| u.required),
            Some(RequiredReason::DeadlinePassed)
        );

        // Counted from the first offer: none yet means no deadline yet.
        r.deadline = Some(DeadlineRule::After(7 * DAY));
        let mut ws = Ws::new(&[]);
        assert_eq!(
            update(&ws.decide(std::slice::from_ref(&r))).and_then(|u| u.deadline),
            None
        );
        ws.first_offered.insert(1, NOW - 8 * DAY);
        assert_eq!(
            update(&ws.decide(std::slice::from_ref(&r))).and_then(|u| u.required),
            Some(RequiredReason::DeadlinePassed)
        );

        // A local deadline falls at different instants in different time zones.
        let local = LocalDateTime {
            naive_ms: NOW + 60 * 60_000,
        };
        r.deadline = Some(DeadlineRule::Local(local));
        let mut east = Ws::new(&[]);
        east.offset = 120;
        assert_eq!(
            update(&east.decide(std::slice::from_ref(&r))).and_then(|u| u.required),
            Some(RequiredReason::DeadlinePassed)
        );
        let west = Ws::new(&[]);
        assert_eq!(update(&west.decide(&[r])).and_then(|u| u.required), None);
    }

    #[test]
    fn waves_gate_delivery() {
        let mut r = rollout(1, "1.0.0", Approval::Approved, all());
        let cuts = crate::wave_cuts(&[5, 25, 100], Vec::new());
        let wave = wave_by_cuts(&cuts, placement(1, "ws1"));
        r.waves = Some((cuts.clone(), wave));
        assert_eq!(
            update(&run(&[], &[], std::slice::from_ref(&r))),
            None,
            "wave {wave} not open"
        );
        r.waves = Some((cuts, wave + 1));
        assert_eq!(update(&run(&[], &[], &[r])).map(|u| u.wave), Some(wave));
    }

    #[test]
    fn requirements_hold_an_update_back() {
        let mut r = rollout(1, "2.0.0", Approval::Approved, all());
        r.requires = vec![("crm-server".into(), VersionReq::parse(">=5.3.1").unwrap())];
        let demo = |d: Vec<ProductDecision>| d.into_iter().find(|d| d.product == "demo").unwrap();
        let d = demo(run(&[("demo", "1.0.0")], &[], std::slice::from_ref(&r)));
        assert_eq!(d.update, None);
        assert_eq!(
            d.held_back.as_deref(),
            Some("needs crm-server >=5.3.1; it is not installed")
        );
        let d = demo(run(
            &[("demo", "1.0.0"), ("crm-server", "5.2.0")],
            &[],
            std::slice::from_ref(&r),
        ));
        assert_eq!(
            d.held_back.as_deref(),
            Some("needs crm-server >=5.3.1; 5.2.0 is installed")
        );
        let d = demo(run(&[("demo", "1.0.0"), ("crm-server", "5.3.1")], &[], &[r]));
        assert!(d.update.is_some() && d.held_back.is_none());
    }

    proptest! {
        #[test]
        fn never_offers_unapproved_or_downgrades(
            installed_minor in proptest::option::of(0u64..5),
            specs in proptest::collection::vec((0u64..5, 0u8..3, 0u8..5, any::<bool>(), any::<bool>()), 0..6),
        ) {
            let states = [RolloutState::Scheduled, RolloutState::Active, RolloutState::Paused, RolloutState::Completed, RolloutState::Cancelled];
            let rollouts: Vec<RolloutView> = specs.iter().enumerate().map(|(i, (minor, a, state, all_targets, downgrade))| {
                let approval = [Approval::Pending, Approval::Approved, Approval::Disapproved][usize::from(*a)];
                let mut r = rollout(i as i64, &format!("1.{minor}.0"), approval, Targets { all: *all_targets, ..Targets::default() });
                r.state = states[usize::from(*state)];
                r.allow_downgrade = *downgrade;
                r
            }).collect();
            let installed: Vec<(&str, String)> = installed_minor.map(|m| ("demo", format!("1.{m}.0"))).into_iter().collect();
            let installed_refs: Vec<(&str, &str)> = installed.iter().map(|(p, s)| (*p, s.as_str())).collect();
            let decisions = run(&installed_refs, &[], &rollouts);
            prop_assert!(decisions.len() <= 1, "one decision per product");
            for d in decisions {
                if let Some(u) = d.update {
                    let r = rollouts.iter().find(|r| r.id == u.rollout_id).expect("offer names a rollout");
                    prop_assert_eq!(r.approval, Approval::Approved);
                    prop_assert!(r.state.delivers(r.starts_at, NOW));
                    if let Some(inst) = &d.installed {
                        prop_assert!(u.version != *inst);
                        prop_assert!(u.version > *inst || r.allow_downgrade);
                    }
                }
            }
        }
    }
}
