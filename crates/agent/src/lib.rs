//! `upkeep-agent`: the program on each workstation. It enrolls with a server, checks in, downloads,
//! verifies, installs, reports, and launches products — refusing versions the administrator has
//! blocked.
//!
//! One module per step: [`client`] (HTTP), [`download`] (mirrors, then resumable fetch; digest check),
//! [`install`] (signature check, unpack, atomic switch, recovery), [`state`] (the state folder),
//! [`progress`]; the commands are in [`commands`].

pub mod client;
pub mod commands;
pub mod delta;
pub mod download;
pub mod error;
pub mod hooks;
pub mod install;
pub mod pipeline;
pub mod progress;
pub mod sessions;
pub mod state;
pub mod tuf;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::AgentError;

#[derive(Debug, Parser)]
#[command(
    name = "upkeep-agent",
    version,
    about = "The upkeep agent: keeps this machine's products up to date"
)]
pub struct Cli {
    /// State folder (enrollment, downloads, installed products).
    #[arg(long, global = true, env = "UPKEEP_AGENT_STATE")]
    pub state: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this machine with an upkeep server.
    Enroll {
        #[arg(long)]
        server: String,
        /// Enrollment token from `upkeep enroll-token create`.
        #[arg(long, env = "UPKEEP_ENROLL_TOKEN")]
        token: String,
        /// Groups to join (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Replace an existing enrollment.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check in and show what is available.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Download, verify and install the updates offered (all, or the products named).
    Update {
        products: Vec<String>,
        #[arg(long)]
        json: bool,
        /// When someone is still using a product, wait this long (default 1h) for them to finish
        /// instead of refusing.
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "1h", value_parser = parse_interval)]
        wait: Option<std::time::Duration>,
    },
    /// Go back to the previous version of a product on purpose.
    Rollback {
        product: String,
        #[arg(long)]
        json: bool,
    },
    /// Show what is installed and what the last check-in said (no network).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check in periodically, install required updates and report, until stopped.
    Daemon {
        /// Time between check-ins (±10% jitter): 30s, 5m, 1h.
        #[arg(long, default_value = "60s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// One round, then exit (for cron-like schedulers).
        #[arg(long)]
        once: bool,
    },
    /// Start a product, refusing a blocked version and installing a required update first.
    Launch {
        product: String,
        /// Report the decision as JSON instead of starting the program.
        #[arg(long)]
        json: bool,
        /// Arguments for the program.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    upkeep_domain::parse_duration(text)
        .map(|ms| std::time::Duration::from_millis(ms.unsigned_abs()))
        .map_err(|e| e.to_string())
}

/// The default state folder: `$XDG_DATA_HOME/upkeep-agent` or the platform's equivalent.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".local/share/upkeep-agent"))
        .unwrap_or_else(|| PathBuf::from("upkeep-agent-state"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upkeep-agent: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = matches!(
        cli.command,
        Command::Enroll { json: true, .. }
            | Command::Check { json: true }
            | Command::Update { json: true, .. }
            | Command::Status { json: true }
            | Command::Launch { json: true, .. }
            | Command::Rollback { json: true, .. }
    );
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            if json {
                let body = serde_json::json!({ "error": { "code": err.code(), "message": err.to_string() } });
                println!("{body}");
            } else {
                eprintln!("upkeep-agent: error: {err}");
                if let Some(hint) = err.hint() {
                    eprintln!("  hint: {hint}");
                }
            }
            ExitCode::from(err.exit_code())
        }
    }
}
