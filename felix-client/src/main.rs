//! The felix-client binary: see [`felix_client::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    felix_client::cli::run_cli(std::env::args_os())
}
