//! `upkeep`: see `upkeep_cli`.
fn main() -> std::process::ExitCode {
    upkeep_cli::main()
}
