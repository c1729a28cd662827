//! netns: opens the dataplane's rtnetlink connection, inside a named network namespace
//! when one is configured.
//!
//! A netlink socket belongs to the namespace of the thread that created it, for its whole
//! life. So for a named namespace a fresh OS thread (never a runtime or blocking-pool
//! thread, which would stay in the namespace and be reused) enters it with `setns`,
//! creates the socket (registered with the caller's tokio runtime) and exits. The
//! returned connection future is spawned by the caller; the socket keeps targeting the
//! namespace from any thread.

use std::fs::File;

use nix::sched::CloneFlags;
use rtnetlink::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::DataplaneError;
use super::exec::NETNS_DIR;

/// An open rtnetlink connection: the request handle and the owned task driving it
/// (aborted when this is dropped).
#[derive(Debug)]
pub(crate) struct Netlink {
    /// Requests go through this.
    pub(crate) handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens rtnetlink in `netns` (`None`: the current namespace).
pub(crate) async fn open(netns: Option<&str>) -> Result<Netlink, DataplaneError> {
    let netlink_error = |e: std::io::Error| DataplaneError::Netlink(e.to_string());
    let (connection, handle, _) = match netns {
        None => rtnetlink::new_connection().map_err(netlink_error)?,
        Some(name) => {
            let path = format!("{NETNS_DIR}/{name}");
            let runtime = tokio::runtime::Handle::current();
            let (tx, rx) = oneshot::channel();
            let namespace_error = {
                let name = name.to_owned();
                move |e: String| DataplaneError::Netns {
                    name: name.clone(),
                    reason: e,
                }
            };
            std::thread::Builder::new()
                .name("dataplane-netns".into())
                .spawn(move || {
                    let result = (|| {
                        let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                            .map_err(|e| format!("setns {path}: {e}"))?;
                        let _runtime = runtime.enter();
                        rtnetlink::new_connection().map_err(|e| e.to_string())
                    })();
                    let _ = tx.send(result);
                })
                .map_err(|e| namespace_error(e.to_string()))?;
            rx.await
                .map_err(|_| namespace_error("namespace thread ended early".into()))?
                .map_err(namespace_error)?
        }
    };
    let task = tokio::spawn(connection);
    Ok(Netlink { handle, task })
}
