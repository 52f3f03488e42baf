//! The `sluice` binary: parses the command line and hands over to `sluice::cli`.

fn main() -> std::process::ExitCode {
    sluice::memory::tune_allocator();
    sluice::cli::main()
}
