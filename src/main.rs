//! The `outpost` binary: every component and command of Outpost in one executable.

fn main() -> std::process::ExitCode {
    outpost::cli::main()
}
