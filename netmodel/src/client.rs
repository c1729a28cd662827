//! The Kubernetes API client both binaries build: from `--kubeconfig` when given, else as
//! `kube::Config::infer` does (KUBECONFIG, ~/.kube/config, then in-cluster).

use std::path::{Path, PathBuf};

/// The Kubernetes client could not be configured. Not retryable: the configuration is wrong.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// The given kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was found and this is not a pod in a cluster.
    #[error("no kubeconfig and not in a cluster: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// Builds the API client from `kubeconfig`, or infers the configuration.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| KubeClientError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(without_retry(config))?)
}

/// Turns off the client's own retry layer (up to 15 attempts of 429/503/504 with growing
/// delays). The watchers retry with their own backoff; the layer only hides errors from
/// them and their metrics, and held a 504 "Too large resource version" (an API restored
/// with an older history) for minutes before the watcher could relist.
pub fn without_retry(mut config: kube::Config) -> kube::Config {
    config.default_retry = false;
    config
}
