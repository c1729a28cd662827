//! [`Kubectl`]: the real kubectl pointed at one API server (a kube-sim) through a
//! throw-away kubeconfig and cache directory, with runs that must succeed or fail.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::Scratch;

/// The kubectl binary the tests drive (v1.32).
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl pointed at one API server.
#[derive(Debug)]
pub struct Kubectl {
    /// Scratch directory (kubeconfig, cache, manifests).
    pub dir: PathBuf,
    /// The directory when this owns it (removed on drop).
    _scratch: Option<Scratch>,
}

impl Kubectl {
    /// A kubeconfig for the server at `url` in a fresh [`Scratch`] directory named after
    /// the URL (so servers of one test do not share a cache), removed on drop.
    pub fn new(url: &str) -> Kubectl {
        let tag: String = url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let scratch = Scratch::new(&format!("kubectl-{tag}"));
        let kubectl = Kubectl::in_dir(url, scratch.path());
        Kubectl {
            _scratch: Some(scratch),
            ..kubectl
        }
    }

    /// A kubeconfig for the server at `url` in `dir`, which the caller owns.
    pub fn in_dir(url: &str, dir: &Path) -> Kubectl {
        assert!(
            Path::new(KUBECTL).exists(),
            "kubectl is required for this test: install kubectl (v1.32) at {KUBECTL}"
        );
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster: {{server: \"{url}\"}}\n\
             contexts:\n- name: sim\n  context: {{cluster: sim, user: sim}}\ncurrent-context: sim\n\
             users:\n- name: sim\n  user: {{}}\n"
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        Kubectl {
            dir: dir.to_path_buf(),
            _scratch: None,
        }
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A kubectl command with the kubeconfig and cache set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
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

    /// `kubectl patch <words> -p <patch>`, which must succeed; returns stdout. `words`
    /// name what to patch and how, split at white space
    /// (`"pod web -n demo --subresource=status --type=merge"`).
    pub async fn patch(&self, words: &str, patch: &str) -> String {
        self.ok(&patch_args(words, patch)).await
    }

    /// The same patch expecting failure; returns stderr.
    pub async fn patch_fails(&self, words: &str, patch: &str) -> String {
        self.fails(&patch_args(words, patch)).await
    }

    /// `kubectl create deployment <name> -n <namespace> --image=<image>
    /// --replicas=<replicas> <flags...>`, then waits for its rollout ([`Kubectl::rollout`]).
    pub async fn deploy(
        &self,
        name: &str,
        namespace: &str,
        image: &str,
        replicas: u32,
        flags: &[&str],
    ) {
        let (image, replicas) = (format!("--image={image}"), format!("--replicas={replicas}"));
        let mut args = vec![
            "create",
            "deployment",
            name,
            "-n",
            namespace,
            &image,
            &replicas,
        ];
        args.extend(flags);
        self.ok(&args).await;
        self.rollout(name, namespace).await;
    }

    /// `kubectl rollout status deployment/<name> -n <namespace>`: waits (up to a minute)
    /// until the deployment's rollout is complete.
    pub async fn rollout(&self, name: &str, namespace: &str) {
        let deployment = format!("deployment/{name}");
        self.ok(&[
            "rollout",
            "status",
            &deployment,
            "-n",
            namespace,
            "--timeout=60s",
        ])
        .await;
    }
}

/// The arguments of `kubectl patch` (see [`Kubectl::patch`]).
fn patch_args<'a>(words: &'a str, patch: &'a str) -> Vec<&'a str> {
    let mut args = vec!["patch"];
    args.extend(words.split_whitespace());
    args.extend(["-p", patch]);
    args
}
