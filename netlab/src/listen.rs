//! Pod listeners: a TCP and a UDP socket per port and IP family inside a pod's namespace
//! (an IPv6 bench's namespaces have `bindv6only` on, so `[::]` and `0.0.0.0` listeners
//! coexist and each takes its own family). TCP accepts
//! and closes (the probe only needs the handshake); UDP echoes each datagram to its
//! sender. The sockets are bound by a thread inside the namespace and served by tokio
//! tasks that stop when the token is cancelled.

use std::net::{TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::NetlabError;
use crate::netns::{io_err, run_in};
use crate::stack::IpFamily;

/// Binds TCP and UDP on every port of `ports` and family of `families` in `netns` (all
/// addresses) and serves them on `tasks` until `stop` is cancelled.
pub async fn start(
    netns: &str,
    ports: &[u16],
    families: &[IpFamily],
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> Result<(), NetlabError> {
    let (name, wanted) = (netns.to_string(), ports.to_vec());
    let families = families.to_vec();
    let bound = run_in(netns, move || {
        let mut out = Vec::new();
        let addrs = families.iter().map(|f| f.unspecified());
        for (addr, port) in addrs.flat_map(|a| wanted.iter().map(move |p| (a, *p))) {
            let tcp = StdTcpListener::bind((addr, port))
                .map_err(io_err(&name, "binding a TCP listener"))?;
            tcp.set_nonblocking(true)
                .map_err(io_err(&name, "TCP listener non-blocking"))?;
            let udp = StdUdpSocket::bind((addr, port))
                .map_err(io_err(&name, "binding a UDP listener"))?;
            udp.set_nonblocking(true)
                .map_err(io_err(&name, "UDP listener non-blocking"))?;
            out.push((tcp, udp));
        }
        Ok(out)
    })
    .await?;
    for (tcp, udp) in bound {
        let tcp = TcpListener::from_std(tcp).map_err(io_err(netns, "registering TCP"))?;
        let udp = UdpSocket::from_std(udp).map_err(io_err(netns, "registering UDP"))?;
        tasks.spawn(serve_tcp(tcp, stop.clone()));
        tasks.spawn(serve_udp(udp, stop.clone()));
    }
    Ok(())
}

async fn serve_tcp(listener: TcpListener, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => {
                if let Err(error) = accepted {
                    tracing::debug!(%error, "accept failed");
                }
            }
        }
    }
}

async fn serve_udp(socket: UdpSocket, stop: CancellationToken) {
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => {
                    if let Err(error) = socket.send_to(&buf[..n], peer).await {
                        tracing::debug!(%error, %peer, "echo failed");
                    }
                }
                Err(error) => tracing::debug!(%error, "recv failed"),
            },
        }
    }
}
