//! felix-cni: run by the container runtime as a CNI plugin (no arguments; `CNI_*`
//! environment, config on stdin, result on stdout), or as `felix-cni install` by the
//! DaemonSet's init container. Logs go to the config's `logFile`, never to stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use felix_cni::config::RuntimeEnv;
use felix_cni::error::{CniError, DEFAULT_VERSION};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "install") {
        return felix_cni::cli::run_install(std::env::args_os().skip(1));
    }
    run_plugin()
}

/// The log file the config names (read leniently: a config too broken to parse still
/// gets its failure logged to the default file).
fn log_file(stdin: &[u8]) -> PathBuf {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["logFile"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/log/felix-cni/cni.log"))
}

fn init_logging(path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // No log file (read-only host path, say): log nothing rather than touch stdout.
    if let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("FELIX_CNI_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
    }
}

fn run_plugin() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    init_logging(&log_file(&stdin));
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| DEFAULT_VERSION.to_string());
    let outcome = read
        .map_err(|source| CniError::Io {
            what: "reading stdin".into(),
            source,
        })
        .and_then(|_| RuntimeEnv::from_vars(|k| std::env::var(k).ok()))
        .and_then(|env| felix_cni::plugin::run(&env, &stdin));
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(result) => {
            if let Some(result) = result {
                let _ = writeln!(stdout, "{result}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "failed");
            let json = serde_json::to_string(&e.result(&version)).unwrap_or_default();
            let _ = writeln!(stdout, "{json}");
            ExitCode::FAILURE
        }
    }
}
