//! The sync client's reconnect policy as a pure state machine: how a session ended in,
//! what to do next out. No clock, no sockets, no metrics: [`crate::sync::SyncClient::run`]
//! is the thin async driver that carries out the [`Action`] (sleeps, counts, picks).
//!
//! Rules (unchanged from the loop they came from):
//! - a session that reached in-sync resets the backoff before its end is judged;
//! - a failure (connect error, session error, goodbye(protocol error / unspecified /
//!   unknown)) grows the backoff (`backoff_min * 2^(attempt-1)`, capped at
//!   `backoff_max`, jittered by the driver) and counts as a failure;
//! - goodbye(rebalance / shutdown) moves to another replica after a jittered
//!   `backoff_min`, without growing the backoff or counting a failure;
//! - goodbye(resync) forgets the resume position and reconnects after a jittered
//!   `backoff_min`, also not a failure;
//! - shutdown stops; a bad address is a configuration error and stops with it.

use typha_proto::pb::GoodbyeReason;

/// The policy's state: consecutive failures since the last session that reached in-sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Failures in a row (0 after a good session).
    pub attempt: u32,
}

/// How a session ended, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// The address cannot be used at all (a configuration error).
    BadAddress,
    /// The server said goodbye.
    Goodbye(GoodbyeReason),
    /// The session failed after connecting.
    Failed,
    /// Connecting failed.
    ConnectError,
}

/// An event: a session ended, and whether it had reached in-sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Whether the session brought the client in sync at least once.
    pub synced: bool,
    /// How it ended.
    pub ended: Ended,
}

/// How long to wait before the next attempt (the driver adds the jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delay {
    /// About `backoff_min` (not a failure).
    Min,
    /// The exponential backoff for this many failures in a row.
    Backoff(u32),
}

/// Every `reason` label of `felix_sync_reconnects_total`.
pub const RECONNECT_REASONS: &[&str] = &[
    "goodbye_rebalance",
    "goodbye_shutdown",
    "goodbye_resync",
    "goodbye_protocol_error",
    "goodbye_unspecified",
    "connect_error",
    "error",
];

/// What counts the reconnect goes into (`SyncStatus` counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// A goodbye: not a failure.
    Goodbye,
    /// A failure.
    Failure,
}

/// One reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// The `reason` label of `felix_sync_reconnects_total`.
    pub label: &'static str,
    /// The wait before the next attempt.
    pub delay: Delay,
    /// Try another candidate than the one just used (the picker ignores this when it is
    /// the only one).
    pub avoid_last: bool,
    /// Forget the mirror's resume position (the server's history no longer covers it).
    pub forget_position: bool,
    /// Tell the agent it is disconnected (`SyncEvent::Disconnected`).
    pub report_disconnect: bool,
    /// Which counter.
    pub counted: Counted,
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Return the mirror (shutdown).
    Stop,
    /// Return the configuration error.
    GiveUp,
    /// Wait, then connect again.
    Reconnect(Reconnect),
}

/// The transition function (see the module docs).
pub fn step(state: State, event: Event) -> (Action, State) {
    let state = if event.synced {
        State::default()
    } else {
        state
    };
    let failure = |label, avoid_last| {
        let attempt = state.attempt.saturating_add(1);
        let reconnect = Reconnect {
            label,
            delay: Delay::Backoff(attempt),
            avoid_last,
            forget_position: false,
            report_disconnect: label == "error",
            counted: Counted::Failure,
        };
        (Action::Reconnect(reconnect), State { attempt })
    };
    let goodbye = |label, avoid_last, forget_position| {
        let reconnect = Reconnect {
            label,
            delay: Delay::Min,
            avoid_last,
            forget_position,
            report_disconnect: false,
            counted: Counted::Goodbye,
        };
        (Action::Reconnect(reconnect), state)
    };
    match event.ended {
        Ended::Shutdown => (Action::Stop, state),
        Ended::BadAddress => (Action::GiveUp, state),
        Ended::Goodbye(reason @ (GoodbyeReason::Rebalance | GoodbyeReason::Shutdown)) => {
            goodbye(goodbye_label(reason), true, false)
        }
        Ended::Goodbye(GoodbyeReason::Resync) => goodbye("goodbye_resync", false, true),
        // Protocol error, unspecified, or newer than this client: a failure. Unlike a
        // broken session, the server is alive and said so: the same replica may be
        // picked again.
        Ended::Goodbye(reason) => failure(goodbye_label(reason), false),
        // A replica that just failed is the worst next pick (it was probably killed).
        Ended::Failed => failure("error", true),
        Ended::ConnectError => failure("connect_error", true),
    }
}

/// The `reason` label of a reconnect after goodbye(`reason`).
pub fn goodbye_label(reason: GoodbyeReason) -> &'static str {
    match reason {
        GoodbyeReason::Rebalance => "goodbye_rebalance",
        GoodbyeReason::Shutdown => "goodbye_shutdown",
        GoodbyeReason::Resync => "goodbye_resync",
        GoodbyeReason::ProtocolError => "goodbye_protocol_error",
        _ => "goodbye_unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [u32; 4] = [0, 1, 7, u32::MAX];

    fn events() -> Vec<Ended> {
        let mut events = vec![
            Ended::Shutdown,
            Ended::BadAddress,
            Ended::Failed,
            Ended::ConnectError,
        ];
        events.extend(
            [
                GoodbyeReason::Unspecified,
                GoodbyeReason::Rebalance,
                GoodbyeReason::Shutdown,
                GoodbyeReason::Resync,
                GoodbyeReason::ProtocolError,
            ]
            .map(Ended::Goodbye),
        );
        events
    }

    /// The expected outcome, written as a table independent of `step`'s structure:
    /// (action kind, label, delay is Min, avoid, forget, report, failure).
    fn expected(ended: Ended) -> Option<(&'static str, bool, bool, bool, bool, bool)> {
        Some(match ended {
            Ended::Shutdown | Ended::BadAddress => return None,
            Ended::Failed => ("error", false, true, false, true, true),
            Ended::ConnectError => ("connect_error", false, true, false, false, true),
            Ended::Goodbye(GoodbyeReason::Rebalance) => {
                ("goodbye_rebalance", true, true, false, false, false)
            }
            Ended::Goodbye(GoodbyeReason::Shutdown) => {
                ("goodbye_shutdown", true, true, false, false, false)
            }
            Ended::Goodbye(GoodbyeReason::Resync) => {
                ("goodbye_resync", true, false, true, false, false)
            }
            Ended::Goodbye(GoodbyeReason::ProtocolError) => {
                ("goodbye_protocol_error", false, false, false, false, true)
            }
            Ended::Goodbye(_) => ("goodbye_unspecified", false, false, false, false, true),
        })
    }

    #[test]
    fn every_state_and_event() {
        for attempt in STATES {
            for synced in [false, true] {
                for ended in events() {
                    let before = State { attempt };
                    let (action, after) = step(before, Event { synced, ended });
                    let base = if synced { 0 } else { attempt };
                    let case = format!("attempt {attempt}, synced {synced}, {ended:?}");
                    match expected(ended) {
                        None => {
                            let want = if ended == Ended::Shutdown {
                                Action::Stop
                            } else {
                                Action::GiveUp
                            };
                            assert_eq!(action, want, "{case}");
                            assert_eq!(after.attempt, base, "{case}");
                        }
                        Some((label, min, avoid, forget, report, failure)) => {
                            let Action::Reconnect(r) = action else {
                                panic!("{case}: {action:?}");
                            };
                            assert_eq!(r.label, label, "{case}");
                            assert_eq!(r.avoid_last, avoid, "{case}");
                            assert_eq!(r.forget_position, forget, "{case}");
                            assert_eq!(r.report_disconnect, report, "{case}");
                            let grown = base.saturating_add(1);
                            if failure {
                                assert_eq!(r.counted, Counted::Failure, "{case}");
                                assert_eq!(r.delay, Delay::Backoff(grown), "{case}");
                                assert_eq!(after.attempt, grown, "{case}");
                            } else {
                                assert!(min);
                                assert_eq!(r.counted, Counted::Goodbye, "{case}");
                                assert_eq!(r.delay, Delay::Min, "{case}");
                                assert_eq!(after.attempt, base, "{case}: no growth");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn backoff_grows_across_failures_and_resets_after_a_good_session() {
        let failed = Event {
            synced: false,
            ended: Ended::ConnectError,
        };
        let mut state = State::default();
        for want in 1..=5 {
            state = step(state, failed).1;
            assert_eq!(state.attempt, want);
        }
        let rebalance = Event {
            synced: false,
            ended: Ended::Goodbye(GoodbyeReason::Rebalance),
        };
        assert_eq!(step(state, rebalance).1.attempt, 5, "a goodbye keeps it");
        let good_then_failed = Event {
            synced: true,
            ended: Ended::Failed,
        };
        assert_eq!(step(state, good_then_failed).1.attempt, 1);
    }
}
