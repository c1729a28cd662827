//! Long-lived TCP connections between namespaces, for lifecycle tests: a connection
//! opened once and then used for numbered request/reply exchanges (data both ways), and
//! a pump that keeps exchanging in the background so that an interruption anywhere in a
//! test shows up as a failed or out-of-order exchange.
//!
//! Invariants: every exchange carries a sequence number both ways and checks it, so a
//! lost, duplicated or reordered message is an error, never a silent pass; every wait is
//! bounded by the caller's limit (a stalled connection fails instead of hanging).

use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::NetlabError;
use crate::netns::{io_err, run_in};

/// The bytes of one message: an 8-byte sequence number and a direction tag.
const MESSAGE: usize = 9;
const REQUEST: u8 = b'>';
const REPLY: u8 = b'<';

/// One open TCP connection: the client end (in the source namespace) and the server
/// end (in the destination namespace).
pub struct Flow {
    client: TcpStream,
    server: TcpStream,
    seen_source: SocketAddr,
    next: u64,
}

/// Binds a TCP listener on `ip:port` inside `netns`.
pub async fn bind(
    netns: &str,
    ip: impl Into<IpAddr>,
    port: u16,
) -> Result<TcpListener, NetlabError> {
    let (name, ip) = (netns.to_string(), ip.into());
    let std = run_in(netns, move || {
        let l =
            StdTcpListener::bind((ip, port)).map_err(io_err(&name, "binding a flow listener"))?;
        l.set_nonblocking(true)
            .map_err(io_err(&name, "flow listener non-blocking"))?;
        Ok(l)
    })
    .await?;
    TcpListener::from_std(std).map_err(io_err(netns, "registering a flow listener"))
}

/// Connects from inside `netns` to `to` within `limit`.
pub async fn connect(
    netns: &str,
    to: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, NetlabError> {
    let name = netns.to_string();
    let socket = run_in(netns, move || {
        match to {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(io_err(&name, "creating a flow socket"))
    })
    .await?;
    match tokio::time::timeout(limit, socket.connect(to)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(io_err(netns, "connecting a flow")(e)),
        Err(_) => Err(io_err(netns, "connecting a flow")(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

fn timed_out(what: &'static str) -> NetlabError {
    NetlabError::Netns {
        netns: "flow".into(),
        what,
        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
    }
}

fn broken(what: &'static str, detail: String) -> NetlabError {
    NetlabError::Netns {
        netns: "flow".into(),
        what,
        source: std::io::Error::other(detail),
    }
}

impl Flow {
    /// Opens a connection from `from_netns` to `to_ip:port`, listening in `to_netns`
    /// (on all addresses of `to_ip`'s family), each step within `limit`.
    pub async fn open(
        from_netns: &str,
        to_netns: &str,
        to_ip: impl Into<IpAddr>,
        port: u16,
        limit: Duration,
    ) -> Result<Flow, NetlabError> {
        let to = SocketAddr::new(to_ip.into(), port);
        let unspecified = crate::stack::IpFamily::of(to.ip()).unspecified();
        let listener = bind(to_netns, unspecified, port).await?;
        let (client, accepted) = tokio::join!(
            connect(from_netns, to, limit),
            tokio::time::timeout(limit, listener.accept())
        );
        let client = client?;
        let (server, seen_source) = match accepted {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(io_err(to_netns, "accepting a flow")(e)),
            Err(_) => return Err(timed_out("accepting a flow")),
        };
        client
            .set_nodelay(true)
            .map_err(io_err(from_netns, "TCP_NODELAY"))?;
        server
            .set_nodelay(true)
            .map_err(io_err(to_netns, "TCP_NODELAY"))?;
        Ok(Flow {
            client,
            server,
            seen_source,
            next: 0,
        })
    }

    /// The client's address as the server saw it (after any NAT on the way).
    pub fn seen_source(&self) -> SocketAddr {
        self.seen_source
    }

    /// Exchanges completed so far.
    pub fn exchanges(&self) -> u64 {
        self.next
    }

    /// One exchange: the client sends message n, the server checks it and replies n,
    /// the client checks the reply. Bounded by `limit`.
    pub async fn exchange(&mut self, limit: Duration) -> Result<(), NetlabError> {
        let n = self.next;
        let round = async {
            send(&mut self.client, REQUEST, n).await?;
            expect(&mut self.server, REQUEST, n).await?;
            send(&mut self.server, REPLY, n).await?;
            expect(&mut self.client, REPLY, n).await
        };
        match tokio::time::timeout(limit, round).await {
            Ok(result) => result?,
            Err(_) => return Err(timed_out("a flow exchange")),
        }
        self.next += 1;
        Ok(())
    }

    /// Keeps exchanging in the background, one exchange per `every`, each bounded by
    /// `limit`, until stopped (see [`Pump::stop`]).
    pub fn pump(self, every: Duration, limit: Duration) -> Pump {
        let (done, seen) = watch::channel(self.next);
        let stop = CancellationToken::new();
        let task = tokio::spawn(pump(self, every, limit, done, stop.clone()));
        Pump { seen, stop, task }
    }
}

async fn send(stream: &mut TcpStream, tag: u8, n: u64) -> Result<(), NetlabError> {
    let mut buf = [0u8; MESSAGE];
    buf[0] = tag;
    buf[1..].copy_from_slice(&n.to_be_bytes());
    stream
        .write_all(&buf)
        .await
        .map_err(|e| broken("writing to a flow", e.to_string()))
}

async fn expect(stream: &mut TcpStream, tag: u8, n: u64) -> Result<(), NetlabError> {
    let mut buf = [0u8; MESSAGE];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| broken("reading from a flow", e.to_string()))?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[1..]);
    let got = u64::from_be_bytes(seq);
    if buf[0] != tag || got != n {
        return Err(broken(
            "a flow message out of sequence",
            format!(
                "expected {} #{n}, got {} #{got}",
                tag as char, buf[0] as char
            ),
        ));
    }
    Ok(())
}

async fn pump(
    mut flow: Flow,
    every: Duration,
    limit: Duration,
    done: watch::Sender<u64>,
    stop: CancellationToken,
) -> Result<Flow, NetlabError> {
    // Pacing, not waiting for a condition: one exchange per tick.
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(flow),
            _ = tick.tick() => {}
        }
        flow.exchange(limit).await?;
        done.send_replace(flow.exchanges());
    }
}

/// A [`Flow`] exchanging in the background.
pub struct Pump {
    /// Exchanges done; closed when the pump task ends.
    seen: watch::Receiver<u64>,
    stop: CancellationToken,
    task: JoinHandle<Result<Flow, NetlabError>>,
}

impl Pump {
    /// Exchanges completed so far.
    pub fn exchanges(&self) -> u64 {
        *self.seen.borrow()
    }

    /// Waits until `more` exchanges beyond the current count completed (proof that the
    /// connection carries data now), within `limit`. Fails when the pump stopped.
    pub async fn advance(&self, more: u64, limit: Duration) -> Result<(), NetlabError> {
        let target = self.exchanges() + more;
        let mut rx = self.seen.clone();
        match tokio::time::timeout(limit, rx.wait_for(|n| *n >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(broken("a stopped flow pump", "the pump ended".into())),
            Err(_) => Err(timed_out("flow exchanges")),
        }
    }

    /// Stops the pump after its current exchange and returns the flow, or the first
    /// error the pump met (a lost, reordered or stalled exchange).
    pub async fn stop(self) -> Result<Flow, NetlabError> {
        self.stop.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(broken("the flow pump task", e.to_string())),
        }
    }
}
