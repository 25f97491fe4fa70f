//! `upkeep`, the administrator's command line: sign in, publish and approve releases, create
//! enrollment tokens, roll releases out and follow them, all over the server's REST API.
//!
//! Output for people goes to stdout as plain aligned tables; `--json` prints the API's JSON
//! instead, for scripts. Any failure is one line on stderr (`upkeep: error: …`, sometimes
//! followed by a hint) and exit status 1.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

mod client;
mod commands;
mod config;
mod offline;
mod output;
mod upload;

#[derive(Debug, Parser)]
#[command(
    name = "upkeep",
    version,
    about = "Administer an upkeep update server: publish, approve and roll out software to workstations",
    after_help = "Sign in once with `upkeep login`; the sign-in is kept in $UPKEEP_CONFIG_DIR/config.json \
                  (default: your configuration folder, then upkeep/). UPKEEP_SERVER and UPKEEP_TOKEN, \
                  when set, take precedence over it. Tables show times in the local time zone; \
                  --json shows them exactly as the server sent them (RFC 3339, UTC)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign in and save the token for the other commands.
    Login(LoginArgs),
    /// Create and list products.
    #[command(subcommand)]
    Product(ProductCommand),
    /// Upload, list, approve and disapprove releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Create tokens that workstations enroll with.
    #[command(subcommand)]
    EnrollToken(EnrollTokenCommand),
    /// Roll approved releases out to workstations and follow their progress.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// List and inspect enrolled workstations.
    #[command(subcommand)]
    Workstation(WorkstationCommand),
    /// Show the audit log, oldest first; --follow keeps watching for new events.
    #[command(
        after_help = "With --follow, the matching events are printed first, then new ones as \
                            they happen (checked every second) until Ctrl-C. With --json --follow the \
                            output is JSON Lines: one event object per line, not one array."
    )]
    Events(EventsArgs),
    /// Tell people (e-mail) and systems (webhooks) about updates.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// The organization's TUF signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create and list the people who sign in to the server.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from stdin.
    #[command(
        after_help = "printf '%s\\n' \"$PASSWORD\" | upkeep user create alice --role release_manager --password-stdin"
    )]
    Create {
        /// Letters, digits, '.', '_' and '-'.
        name: String,
        /// admin: everything, users included; release_manager: products, releases, rollouts;
        /// viewer: read only.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password (at least 10 characters) from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List users.
    List {
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    // Spelled as the server spells the role.
    #[value(name = "release_manager")]
    ReleaseManager,
    Viewer,
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The server's base URL, e.g. https://updates.example.com.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The user name.
    #[arg(long, value_name = "NAME")]
    user: String,
    /// Read the password from the first line of stdin (it is never taken as an argument, where
    /// other users could see it in the process list).
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Move the organization's root and targets keys off the server into a folder on this
    /// machine (offline mode): from then on only this machine can approve releases.
    Init {
        /// Where to keep the keys [default: <config>/keys/<organization>].
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Replace the root key: the new root is signed by the old and the new key, so agents follow.
    /// Offline, this runs here with the keys in --keys DIR; hosted, on the server.
    RotateRoot {
        /// Where `upkeep keys init` put the keys (offline mode).
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NotifyCommand {
    /// Notification groups.
    #[command(subcommand)]
    Group(NotifyGroupCommand),
}

#[derive(Debug, Subcommand)]
enum NotifyGroupCommand {
    /// Create a group, told when updates of a product (or one rollout) start, complete, fail or
    /// roll back, and when a rollout pauses itself.
    #[command(group(ArgGroup::new("attach").required(true).args(["product", "rollout"])))]
    Create {
        /// Letters, digits, '.', '_' and '-'.
        name: String,
        /// An e-mail address (repeatable).
        #[arg(long = "email", value_name = "ADDRESS")]
        emails: Vec<String>,
        /// A URL that receives a signed JSON POST (repeatable).
        #[arg(long = "webhook", value_name = "URL")]
        webhooks: Vec<String>,
        /// Every update of this product.
        #[arg(long)]
        product: Option<String>,
        /// Only this rollout.
        #[arg(long, value_name = "ID")]
        rollout: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// List the groups with their delivery counts.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProductCommand {
    /// Create a product.
    Create {
        /// Letters, digits, '.', '_' and '-'.
        name: String,
        /// Where the product runs.
        #[arg(long, value_enum, default_value_t = Kind::Client)]
        kind: Kind,
        /// Offer its latest approved releases on the public /downloads page.
        #[arg(long)]
        public: bool,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a product: whether /downloads offers it.
    Update {
        name: String,
        /// true: offer its latest approved releases on /downloads; false: stop.
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        public: bool,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List products.
    List {
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// Runs on workstations.
    Client,
    /// A server-side component.
    Server,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Upload a new version's archive (.tar.gz, .tgz or .zip); it starts out pending approval.
    Upload(UploadArgs),
    /// Approve a release so it can be rolled out.
    Approve {
        /// The product's name.
        product: String,
        /// The release's version.
        version: String,
        /// Offline mode: where `upkeep keys init` put the keys [default: <config>/keys/<organization>].
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Disapprove a release: it cannot be rolled out, and workstations that have it installed
    /// are told not to launch it.
    Disapprove {
        /// The product's name.
        product: String,
        /// The release's version.
        version: String,
        /// Why, for the audit log and the release list.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Offline mode: where `upkeep keys init` put the keys [default: <config>/keys/<organization>].
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List a product's releases.
    List {
        /// The product's name.
        product: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct UploadArgs {
    /// The product's name.
    product: String,
    /// The new version: a semantic version, e.g. 1.4.0.
    version: String,
    /// The archive to upload.
    file: PathBuf,
    /// Which workstations it is for: os-arch (e.g. linux-x86_64, windows-x86_64) or `any`.
    #[arg(long)]
    platform: String,
    /// Release notes, a Markdown file (at most 1 MiB).
    #[arg(long, value_name = "FILE.md")]
    notes: Option<PathBuf>,
    /// The program to start, as a path inside the archive (e.g. bin/demo).
    #[arg(long, value_name = "REL_PATH")]
    launch: Option<String>,
    /// The install manifest (upkeep.toml): recipe, hooks, session probe, health check, requires.
    #[arg(long, value_name = "FILE.toml")]
    manifest: Option<PathBuf>,
    /// Print the server's JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum EnrollTokenCommand {
    /// Create an enrollment token and print it (only the token, so `TOKEN=$(…)` works).
    Create {
        /// Put workstations that enroll with it into this group.
        #[arg(long, value_name = "G")]
        group: Option<String>,
        /// How many workstations may enroll with it; unlimited when left out.
        #[arg(long, value_name = "N")]
        uses: Option<u32>,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Roll an approved release out to all workstations, or to some by id or group.
    #[command(after_help = "Times: RFC 3339 with an offset, e.g. 2026-12-01T18:00:00-03:00 or \
                            2026-12-01T21:00:00Z. Durations: a number and a unit, combined if you like: \
                            30s, 15m, 2h, 7d, 1w, 1h30m.")]
    Create(Box<RolloutCreateArgs>),
    /// List rollouts.
    List {
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a rollout's settings and progress per wave and per workstation.
    Status {
        /// The rollout's number, from `upkeep rollout list`.
        id: i64,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop offering the update for now; workstations already installing finish.
    Pause {
        /// The rollout's number, from `upkeep rollout list`.
        id: i64,
        /// Why, for the audit log and `upkeep rollout status`.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Continue a paused rollout (a rollout whose start is still ahead waits for it again).
    Resume {
        /// The rollout's number, from `upkeep rollout list`.
        id: i64,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// End a rollout for good: the update is no longer offered through it.
    Cancel {
        /// The rollout's number, from `upkeep rollout list`.
        id: i64,
        /// Why, for the audit log and `upkeep rollout status`.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("targets").required(true).multiple(true).args(["all", "workstations", "groups"])))]
#[command(group(ArgGroup::new("deadlines").args(["deadline", "deadline_local", "deadline_after"])))]
struct RolloutCreateArgs {
    /// The product's name.
    product: String,
    /// The release's version.
    version: String,
    /// Every workstation.
    #[arg(long, conflicts_with_all = ["workstations", "groups"])]
    all: bool,
    /// A workstation id; repeat the flag or separate ids with commas.
    #[arg(long = "workstation", value_name = "ID", value_delimiter = ',')]
    workstations: Vec<String>,
    /// A workstation group; repeat the flag or separate groups with commas.
    #[arg(long = "group", value_name = "G", value_delimiter = ',')]
    groups: Vec<String>,
    /// Workstations must install it before the product is used again (default: offered). A
    /// mandatory update is required at once, so it takes no deadline.
    #[arg(long, conflicts_with = "deadlines")]
    mandatory: bool,
    /// Make the optional update required from this instant on (RFC 3339 with an offset).
    #[arg(long, value_name = "RFC3339")]
    deadline: Option<String>,
    /// Make it required from this wall-clock time, read in each workstation's own time zone.
    #[arg(long, value_name = "YYYY-MM-DDTHH:MM")]
    deadline_local: Option<String>,
    /// Make it required this long after each workstation is first offered it, e.g. 7d.
    #[arg(long, value_name = "DURATION")]
    deadline_after: Option<String>,
    /// Start at this time instead of now (RFC 3339 with an offset); until then it is scheduled.
    #[arg(long, value_name = "RFC3339")]
    start: Option<String>,
    /// Open the rollout in waves: cumulative shares of the targeted workstations, ending at 100.
    /// Each wave opens when the previous one has soaked; needs --soak and --max-failure-ratio.
    #[arg(long, value_name = "5,25,100", requires_all = ["soak", "max_failure_ratio"])]
    waves: Option<String>,
    /// How long each wave runs before the next one opens, e.g. 30m, 1d.
    #[arg(long, value_name = "DURATION", requires = "waves")]
    soak: Option<String>,
    /// Pause the rollout by itself when more than this share of finished installs in the open
    /// waves failed: a fraction from 0 to 1 (0.1) or a percentage (10%).
    #[arg(long, value_name = "R", requires = "waves")]
    max_failure_ratio: Option<String>,
    /// Judge failures only once this many installs in the open waves have finished (default: 3).
    #[arg(long, value_name = "N", requires = "waves", value_parser = clap::value_parser!(u32).range(1..))]
    min_sample: Option<u32>,
    /// Offer it also to workstations that have a newer version installed.
    #[arg(long)]
    allow_downgrade: bool,
    /// Install only inside this window, in each workstation's local time, e.g. "Mon-Fri 22:00-06:00",
    /// "Sat,Sun 00:00-24:00" or "daily 01:00-05:00".
    #[arg(long, value_name = "WINDOW")]
    maintenance_window: Option<String>,
    /// Install now: mandatory, and the targeted agents' daemons are woken at once instead of at
    /// their next check-in.
    #[arg(long, conflicts_with_all = ["start", "maintenance_window", "deadline", "deadline_local", "deadline_after"])]
    now: bool,
    /// Show what the rollout would do to the current workstations, without creating it.
    #[arg(long)]
    dry_run: bool,
    /// Print the server's JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum WorkstationCommand {
    /// List enrolled workstations.
    List {
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one workstation.
    Show {
        /// The workstation's id, from `upkeep workstation list`.
        id: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Only events about this product.
    #[arg(long, value_name = "P")]
    product: Option<String>,
    /// Only events about this workstation.
    #[arg(long, value_name = "ID")]
    workstation: Option<String>,
    /// Only events about this rollout.
    #[arg(long, value_name = "ID")]
    rollout: Option<i64>,
    /// Only events from this time on: a span back from now (30m, 1h, 7d), an RFC 3339 time, or a
    /// local date and time as the tables show them ("2026-05-01 09:00", 2026-05-01).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only events of this type (workstation.failed) or family of types (workstation, rollout).
    #[arg(long = "type", value_name = "T")]
    kind: Option<String>,
    /// Show at most the newest N events (the server's default is 1000); with --follow, how many
    /// past events to show before the new ones.
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Keep watching: print new events as they happen, until Ctrl-C.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print the server's JSON instead of text (JSON Lines, one event per line, with --follow).
    #[arg(long)]
    json: bool,
}

/// An error with advice on what to do next, shown as a second `hint:` line.
#[derive(Debug)]
pub(crate) struct Hinted {
    message: String,
    hint: String,
}

impl Hinted {
    pub(crate) fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Hinted {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// Runs the program; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest is built without a default TLS provider, so pick one before any client exists. An
    // error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One request at a time: a single-threaded runtime is all the CLI needs.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(commands::run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// Prints `err` as one line, plus a `hint:` line when the server or the CLI has advice.
fn report(err: &anyhow::Error) {
    // Not `eprintln!`, which panics when stderr is closed; there is nowhere left to complain to.
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "upkeep: error: {}", output::printable(&format!("{err:#}")));
    let hint = err.chain().find_map(|e| {
        if let Some(server) = e.downcast_ref::<client::ServerError>() {
            server.response.hint.clone()
        } else {
            e.downcast_ref::<Hinted>().map(|h| h.hint.clone())
        }
    });
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "  hint: {}", output::printable(&hint));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rollout_create_needs_targets() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["upkeep", "rollout", "create", "demo", "1.0.0"], args].concat());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--all", "--group", "lab"]).is_err());
        assert!(parse(&["--all"]).is_ok());
        let Ok(Cli {
            command: Command::Rollout(RolloutCommand::Create(args)),
        }) = parse(&["--workstation", "a,b", "--workstation", "c", "--group", "lab"])
        else {
            panic!("did not parse");
        };
        assert_eq!(args.workstations, ["a", "b", "c"]);
        assert_eq!(args.groups, ["lab"]);
    }

    fn create(args: &[&str]) -> Result<RolloutCreateArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["upkeep", "rollout", "create", "demo", "1.0.0", "--all"], args].concat())?;
        match cli.command {
            Command::Rollout(RolloutCommand::Create(args)) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn deadlines_exclude_each_other_and_mandatory() {
        use clap::error::ErrorKind;
        let at = ["--deadline", "2026-12-01T18:00:00Z"];
        let local = ["--deadline-local", "2026-12-01T18:00"];
        let after = ["--deadline-after", "7d"];
        for one in [&at, &local, &after] {
            assert!(create(one).is_ok());
            let with_mandatory = create(&[one.as_slice(), &["--mandatory"]].concat());
            assert_eq!(
                with_mandatory.err().map(|e| e.kind()),
                Some(ErrorKind::ArgumentConflict)
            );
        }
        for (a, b) in [(&at, &local), (&at, &after), (&local, &after)] {
            let both = create(&[a.as_slice(), b.as_slice()].concat());
            assert_eq!(both.err().map(|e| e.kind()), Some(ErrorKind::ArgumentConflict));
        }
        assert!(create(&["--mandatory"]).is_ok_and(|a| a.mandatory && a.deadline.is_none()));
    }

    #[test]
    fn waves_need_soak_and_failure_ratio() {
        use clap::error::ErrorKind;
        let missing = |args: &[&str]| create(args).err().map(|e| e.kind());
        assert_eq!(missing(&["--waves", "5,100"]), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            missing(&["--waves", "5,100", "--soak", "1h"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            missing(&["--waves", "5,100", "--max-failure-ratio", "0.1"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
        // The wave settings mean nothing without waves.
        for alone in [["--soak", "1h"], ["--max-failure-ratio", "0.1"], ["--min-sample", "5"]] {
            assert_eq!(missing(&alone), Some(ErrorKind::MissingRequiredArgument), "{alone:?}");
        }
        assert_eq!(
            missing(&[
                "--waves",
                "5,100",
                "--soak",
                "1h",
                "--max-failure-ratio",
                "0.1",
                "--min-sample",
                "0"
            ]),
            Some(ErrorKind::ValueValidation)
        );
        let args = create(&["--waves", "5,100", "--soak", "1h", "--max-failure-ratio", "0.1"]).unwrap();
        assert_eq!(
            (args.waves.as_deref(), args.soak.as_deref(), args.min_sample),
            (Some("5,100"), Some("1h"), None)
        );
    }

    #[test]
    fn rollout_actions_and_event_filters_parse() {
        let Ok(Cli {
            command:
                Command::Rollout(RolloutCommand::Pause {
                    id: 3,
                    reason,
                    json: true,
                }),
        }) = Cli::try_parse_from(["upkeep", "rollout", "pause", "3", "--reason", "freeze", "--json"])
        else {
            panic!("pause did not parse");
        };
        assert_eq!(reason.as_deref(), Some("freeze"));
        assert!(Cli::try_parse_from(["upkeep", "rollout", "resume", "3", "--reason", "x"]).is_err());
        let Ok(Cli {
            command: Command::Events(args),
        }) = Cli::try_parse_from([
            "upkeep",
            "events",
            "--type",
            "workstation",
            "--rollout",
            "4",
            "--since",
            "1h",
            "-f",
            "--json",
        ])
        else {
            panic!("events did not parse");
        };
        assert_eq!(
            (args.kind.as_deref(), args.rollout, args.since.as_deref(), args.follow),
            (Some("workstation"), Some(4), Some("1h"), true)
        );
    }
}
