//! The kube-sim binary: see [`kube_sim::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    kube_sim::cli::run(std::env::args_os())
}
