//! upkeep's domain rules, free of I/O: what a valid name, version and path are, and the check-in
//! decision that tells a workstation what to do with each product.
//!
//! Invariant: nothing here touches the network, the disk or the clock; callers pass the time in.

pub mod decision;
pub mod rollout;
pub mod validate;

pub use decision::{
    Approval, BlockReason, ProductDecision, RequiredReason, RolloutView, Targets, UpdateDecision, WindowState,
    WorkstationView, decide, effective_rollout,
};
pub use rollout::{
    DeadlineRule, LocalDateTime, MaintenanceWindow, RolloutRuleError, RolloutState, WavePlan, WaveStats, WaveStep,
    format_duration, next_wave_step, parse_duration, placement, wave_by_cuts, wave_cuts,
};
pub use validate::{
    ValidationError, link_stays_inside, normalize_archive_path, parse_version, validate_name, validate_platform,
    validate_relative_path,
};
