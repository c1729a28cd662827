//! Shared helpers of the kubectl-driven tests: a throw-away kubeconfig and cache
//! directory per server, and kubectl runs that must succeed or fail.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};

use kube_sim::KubeSim;
use tokio::process::Command;

/// The kubectl binary the tests drive (v1.32).
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl pointed at one kube-sim.
pub struct Kubectl {
    /// Scratch directory (kubeconfig, cache, manifests).
    pub dir: PathBuf,
}

impl Kubectl {
    /// A kubeconfig for `sim` in a fresh directory.
    pub fn new(sim: &KubeSim) -> Self {
        assert!(
            Path::new(KUBECTL).exists(),
            "kubectl is required for this test: install kubectl (v1.32) at {KUBECTL}"
        );
        let dir = std::env::temp_dir().join(format!(
            "kube-sim-kubectl-{}-{}",
            std::process::id(),
            sim.addr().port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster: {{server: \"{}\"}}\n\
             contexts:\n- name: sim\n  context: {{cluster: sim, user: sim}}\ncurrent-context: sim\n\
             users:\n- name: sim\n  user: {{}}\n",
            sim.url()
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        Kubectl { dir }
    }

    /// A kubectl command with the kubeconfig and cache set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .env("HOME", &self.dir)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.command(args).output().await.unwrap();
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
