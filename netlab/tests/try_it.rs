//! Runs `scripts/try-it` (the docs/try-it.md walkthrough) end to end, as root, with the
//! binaries cargo built for this test run (found next to the test executable), and
//! checks what a reader would see: every step's observations in order, exit 0, and no
//! network namespace of the run left behind. A second run gives the script a wrong
//! expectation and checks that it fails, says so, and still cleans up.
//!
//! The binaries come from the workspace build (`cargo nextest run --workspace` builds
//! every package's binaries); with `-p netlab` alone, run `cargo build --bins` first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// Bound on one run of the script: it bounds its own waits, this only turns a hang into
/// a failure (the script is then sent SIGTERM, which still runs its cleanup).
const LIMIT: Duration = Duration::from_secs(120);

/// The check lines of a successful run, in order.
const STEPS: [&str; 6] = [
    "[1] access -> nginx: allowed (expected allowed) ok",
    "[1] cant-access -> nginx: allowed (expected allowed) ok",
    "[2] access -> nginx: denied (expected denied) ok",
    "[2] cant-access -> nginx: denied (expected denied) ok",
    "[3] access -> nginx: allowed (expected allowed) ok",
    "[3] cant-access -> nginx: denied (expected denied) ok",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: the test executable lives in its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for bin in ["typha", "kube-sim", "felix-client"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --bins` (or the whole workspace's tests)",
            dir.join(bin).display()
        );
    }
    dir
}

/// A namespace prefix unique to this process and run.
fn prefix(tag: char) -> String {
    format!("tryit{}{tag}", std::process::id())
}

/// Runs the script with `env`, returning its output.
async fn run_script(prefix: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(repo_root().join("scripts/try-it"));
    cmd.env("TRY_IT_BIN_DIR", bin_dir())
        .env("TRY_IT_PREFIX", prefix)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("cannot start scripts/try-it");
    let pid = child.id().expect("the script's pid");
    match tokio::time::timeout(LIMIT, child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SIGTERM, not SIGKILL: the script's trap deletes its namespaces.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            panic!("scripts/try-it did not finish within {LIMIT:?}");
        }
    }
}

/// Network namespaces whose name starts with `prefix-`.
fn leftover_namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts that `lines` appear in `stdout` in this order.
fn assert_in_order(stdout: &str, lines: &[&str], stderr: &str) {
    let mut rest = stdout;
    for line in lines {
        match rest.find(line) {
            Some(at) => rest = &rest[at + line.len()..],
            None => panic!(
                "missing (or out of order): {line:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            ),
        }
    }
}

#[tokio::test]
async fn the_walkthrough_runs_and_cleans_up() {
    let prefix = prefix('a');
    let output = run_script(&prefix, &[]).await;
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "scripts/try-it failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let expected = [
        "Step 1: no policy",
        STEPS[0],
        STEPS[1],
        "Step 2: default deny",
        "networkpolicy.networking.k8s.io/default-deny created",
        STEPS[2],
        STEPS[3],
        "Step 3: allow ingress to nginx from pods labelled run=access",
        "networkpolicy.networking.k8s.io/access-nginx created",
        STEPS[4],
        STEPS[5],
        "All 6 observations matched their expectations.",
        "cleaned up: processes stopped",
    ];
    assert_in_order(&stdout, &expected, &stderr);
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert_eq!(leftover_namespaces(&prefix), Vec::<String>::new());
}

#[tokio::test]
async fn a_wrong_expectation_fails_the_script_and_still_cleans_up() {
    let prefix = prefix('b');
    let env = [
        ("TRY_IT_EXPECT_1_ACCESS", "denied"),
        ("TRY_IT_TIMEOUT", "2"),
    ];
    let output = run_script(&prefix, &env).await;
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert_in_order(
        &stdout,
        &[
            "[1] access -> nginx: allowed (expected denied) FAIL",
            "cleaned up: processes stopped",
        ],
        &stderr,
    );
    assert!(!stdout.contains("Step 2"), "stopped at the first failure");
    assert!(!stdout.contains("observations matched"), "{stdout}");
    assert_eq!(leftover_namespaces(&prefix), Vec::<String>::new());
}
