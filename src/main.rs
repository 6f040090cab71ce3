//! The `tsad` binary: boots the command line, nothing else.
fn main() -> std::process::ExitCode {
    tsad::cli::main()
}
