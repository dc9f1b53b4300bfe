//! `middleware-engine`: see `host::cli` for the commands.

fn main() -> std::process::ExitCode {
    host::cli::main()
}
