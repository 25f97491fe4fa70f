//! `upkeep-server`: see `upkeep_server::command`.

// A check-in allocates and frees many small values across threads; mimalloc does that in about
// half the time of glibc's allocator (BENCHMARKS.md). The agent and CLI keep the system one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    upkeep_server::command::main()
}
