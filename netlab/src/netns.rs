//! Running code inside a named network namespace. A dedicated, short-lived OS thread
//! enters the namespace (`setns`) and runs the closure; sockets it creates stay in that
//! namespace for their whole life, so they can then be handed to the tokio runtime.
//! Never a pooled thread (tokio's blocking pool reuses threads: a namespace switch
//! would leak into unrelated work).

use std::fs::File;

use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;

use crate::NetlabError;

/// The path `ip netns add` binds a namespace to.
pub fn netns_path(netns: &str) -> String {
    format!("/run/netns/{netns}")
}

fn enter(netns: &str) -> Result<(), NetlabError> {
    let file = File::open(netns_path(netns)).map_err(|source| NetlabError::Netns {
        netns: netns.to_string(),
        what: "opening the namespace",
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetlabError::Netns {
        netns: netns.to_string(),
        what: "setns",
        source: errno.into(),
    })
}

/// Runs `f` on a fresh thread inside `netns` and returns its result.
pub async fn run_in<T, F>(netns: &str, f: F) -> Result<T, NetlabError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetlabError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let name = netns.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            let result = enter(&name).and_then(|()| f());
            let _ = tx.send(result);
        });
    if let Err(source) = spawned {
        return Err(NetlabError::Netns {
            netns: netns.to_string(),
            what: "spawning a thread",
            source,
        });
    }
    rx.await.unwrap_or_else(|_| {
        Err(NetlabError::Netns {
            netns: netns.to_string(),
            what: "the namespace thread panicked",
            source: std::io::Error::other("thread ended without a result"),
        })
    })
}

/// Wraps an I/O error from inside `netns`.
pub fn io_err(netns: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> NetlabError {
    let netns = netns.to_string();
    move |source| NetlabError::Netns {
        netns,
        what,
        source,
    }
}
