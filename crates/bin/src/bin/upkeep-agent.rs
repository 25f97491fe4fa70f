//! `upkeep-agent`: see `upkeep_agent`.
fn main() -> std::process::ExitCode {
    upkeep_agent::main()
}
