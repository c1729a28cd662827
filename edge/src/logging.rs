//! Logs a cluster operator can use, set up once per binary: plain text without colour
//! codes when the output is not a terminal (a pod's log, a file, a pipe), or one JSON
//! object per line on request (`--log-format json`), and error chains printed once.
//!
//! Invariants: colour only when the output is a terminal; [`ErrorChain`] never prints
//! the same cause twice, even when an error's own message already embeds its source
//! (`"binding {addr}: {source}"` plus `#[source]`, common with thiserror), so a chain
//! reads `a: b: c` however each layer chose to format itself.

use std::fmt;
use std::io::IsTerminal;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when the output is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, message).
    Json,
}

/// A logging setup problem (the binary prints it and exits).
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter does not parse (tracing EnvFilter syntax).
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// Why it does not parse.
        reason: String,
    },
}

/// Installs the process-global subscriber writing to stdout: `filter` in EnvFilter
/// syntax, lines in `format`. A second call (tests running several mains in one process)
/// keeps the first subscriber and succeeds.
pub fn init(filter: &str, format: LogFormat) -> Result<(), LoggingError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| LoggingError::Filter {
            filter: filter.to_string(),
            reason: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter);
    // A second init fails harmlessly: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}

/// Displays an error and its causes as `outer: cause: root`, each text once: a cause
/// whose text the message so far already contains (an error that formats its source
/// into its own message) is not repeated.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain_text(self.0))
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text [`ErrorChain`] displays.
pub fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let message = error.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
    text
}

/// [`chain_text`] for an `anyhow::Error`-like chain given as its messages, outermost
/// first (`anyhow::Error::chain().map(ToString::to_string)`): same de-duplication.
pub fn join_chain<I: IntoIterator<Item = String>>(messages: I) -> String {
    let mut text = String::new();
    for message in messages {
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("connection refused")]
        Refused,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Embeds its source in its own message and also returns it as the source.
        #[error("binding 127.0.0.1:1: {source}")]
        Embeds { source: Inner },
        /// Leaves the source to the chain.
        #[error("starting")]
        Plain(#[source] Inner),
    }

    #[test]
    fn each_cause_is_printed_once() {
        let embeds = Outer::Embeds {
            source: Inner::Refused,
        };
        assert_eq!(
            ErrorChain(&embeds).to_string(),
            "binding 127.0.0.1:1: connection refused"
        );
        let plain = Outer::Plain(Inner::Refused);
        assert_eq!(
            ErrorChain(&plain).to_string(),
            "starting: connection refused"
        );
        assert_eq!(
            join_chain(["typha".into(), "a: b".into(), "b".into(), "c".into()]),
            "typha: a: b: c"
        );
    }

    #[test]
    fn a_bad_filter_is_an_error() {
        assert!(matches!(
            init("info,=[", LogFormat::Text),
            Err(LoggingError::Filter { .. })
        ));
    }
}
