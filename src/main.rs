//! The `outpost` binary: every component and command of Outpost in one executable.

/// mimalloc instead of the system allocator, for the binary only (the libraries and their tests
/// keep the default): per-request allocations on the proxy path cost less, see "Gateway proxy" in
/// `docs/benchmarks.md`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    outpost::cli::main()
}
