//! The typha binary's log output as an operator's log collector sees it: written to a
//! file (not a terminal), in text and in JSON, while the API server is unreachable and
//! after it comes back.
//!
//! What is proven, on the real command line (`typha serve` as a child process, its
//! stdout and stderr captured to a file):
//! - no ANSI escape codes when the output is not a terminal, in either format;
//! - `--log-format json`: every line is one JSON object with `level` and `message`;
//! - an unreachable API server is logged by its state changes: one "unreachable" line
//!   per resource however many retries follow (each retry is a debug line only), and
//!   one "reachable again" line once kube-sim starts answering on that address.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A real child process on the wall clock: no tokio clock is paused here.
#![allow(clippy::disallowed_types)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the test waits for a log line that should come within seconds.
const LIMIT: Duration = Duration::from_secs(90);

/// The retries (debug lines) to see for `pods` before counting its state-change lines.
const RETRIES: usize = 3;

const DOWN: &str = "API server unreachable; retrying with backoff";
const RETRY: &str = "watch error; retrying with backoff";
const BACK: &str = "API server reachable again";

/// A typha child process whose output goes to a file; killed (by PID) on drop.
struct TyphaProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for TyphaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TyphaProcess {
    fn start(dir: &Path, api: SocketAddr, format: &str) -> TyphaProcess {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: sim, cluster: {{server: \"http://{api}\"}}}}]\n\
                 contexts: [{{name: sim, context: {{cluster: sim}}}}]\ncurrent-context: sim\n"
            ),
        )
        .unwrap();
        let log = dir.join(format!("typha-{format}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_typha"))
            .arg("serve")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--insecure-plaintext", "--listen", "127.0.0.1:0"])
            .args(["--health-listen", "127.0.0.1:0", "--metrics-listen", "none"])
            .args(["--log", "info,netmodel=debug", "--log-format", format])
            .env_remove("TYPHA_LOG")
            .env_remove("TYPHA_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        TyphaProcess { child, log }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap()).into_owned()
    }

    /// Polls the log (bounded) until `done` holds for its text.
    fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let text = self.text();
            if done(&text) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("typha exited ({status}) before {what}; its log:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {LIMIT:?}; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A loopback address nothing listens on (yet).
fn closed_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("typha-ops-logs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The JSON lines of `text` whose message is `message` and resource `pods`.
fn pods_lines(text: &str, message: &str) -> usize {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["message"] == message && v["resource"] == "pods")
        .count()
}

#[test]
fn json_logs_show_an_outage_by_its_state_changes_and_no_escape_codes() {
    let dir = scratch_dir("json");
    let api = closed_address();
    let mut typha = TyphaProcess::start(&dir, api, "json");
    let text = typha.wait_for("retries against the closed API address", |t| {
        pods_lines(t, RETRY) >= RETRIES
    });
    assert_eq!(
        pods_lines(&text, DOWN),
        1,
        "one 'unreachable' line for pods however many retries; log:\n{text}"
    );
    assert_eq!(
        pods_lines(&text, BACK),
        0,
        "nothing answered yet; log:\n{text}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _sim = runtime
        .block_on(kube_sim::KubeSim::start(kube_sim::Config {
            listen: api,
            ..kube_sim::Config::default()
        }))
        .unwrap();
    let text = typha.wait_for("'reachable again' for pods", |t| pods_lines(t, BACK) >= 1);
    drop(typha);

    assert_eq!(pods_lines(&text, BACK), 1, "log:\n{text}");
    assert_eq!(pods_lines(&text, DOWN), 1, "log:\n{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a file:\n{text}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(value["message"].is_string(), "no message: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_logs_to_a_file_carry_no_escape_codes() {
    let dir = scratch_dir("text");
    let mut typha = TyphaProcess::start(&dir, closed_address(), "text");
    let text = typha.wait_for("the 'unreachable' line", |t| t.contains(DOWN));
    drop(typha);
    assert!(!text.contains('\u{1b}'), "escape codes in a file:\n{text}");
    assert!(text.contains("WARN"), "the level is spelled out: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
