//! The typha binary: see [`typha::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    typha::cli::run(std::env::args_os())
}
