//! `upkeep-server`: see `upkeep_server::command`.

// A check-in allocates and frees many small values across threads: under check-in load glibc's
// malloc and free took about 13% of the server's CPU, mimalloc's about 9% (perf). The agent and
// CLI keep the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    upkeep_server::command::main()
}
