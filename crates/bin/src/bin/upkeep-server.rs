//! `upkeep-server`: see `upkeep_server::command`.
fn main() -> std::process::ExitCode {
    upkeep_server::command::main()
}
