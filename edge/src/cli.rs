//! What every binary's command line shares: parsing with clap's exit codes, printing an
//! error chain once and turning it into the exit code, and the observability flags
//! (`--log`, `--log-format`, `--metrics-listen`) both typha and felix-client take.
//!
//! The observability flags are one clap `Args` block, [`ObserveArgs`], parameterized by
//! the binary's environment variable names ([`ObserveEnv`]): the flags, defaults and help
//! are the same for every binary, only `TYPHA_LOG` / `FELIX_LOG` and the like differ.
//!
//! Invariants: `--help` and `--version` exit 0, a usage error exits 2 (clap's
//! convention), a failed run exits 1 after one line naming the program and the chain.

use std::error::Error;
use std::ffi::OsString;
use std::marker::PhantomData;
use std::process::ExitCode;

use clap::{Arg, ArgMatches, Command, FromArgMatches};

use crate::logging::LogFormat;
use crate::metrics::Listen;

/// Parses `args` (the first is the program name) as `P`. On `--help`, `--version` or a
/// usage error, prints clap's text and returns the code to exit with (0 or 2).
pub fn parse<P, I, T>(args: I) -> Result<P, ExitCode>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    P::try_parse_from(args).map_err(|error| {
        let _ = error.print();
        if error.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The exit code of a run: success, or the error chain printed once on stderr as
/// `program: outer: inner` and failure. Takes `anyhow::Error` (which derefs to `dyn
/// Error`) as well as boxed errors.
pub fn exit_code<E>(program: &str, result: Result<(), E>) -> ExitCode
where
    E: std::ops::Deref<Target = dyn Error + Send + Sync + 'static>,
{
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    let mut chain = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(&*error);
    while let Some(error) = next {
        chain.push(error.to_string());
        next = error.source();
    }
    eprintln!("{program}: {}", crate::logging::join_chain(chain));
    ExitCode::FAILURE
}

/// One binary's environment variable names for [`ObserveArgs`].
pub trait ObserveEnv {
    /// The variable for `--log`.
    const LOG: &'static str;
    /// The variable for `--log-format`.
    const LOG_FORMAT: &'static str;
    /// The variable for `--metrics-listen`.
    const METRICS_LISTEN: &'static str;
    /// The metrics port the manifests in k8s/ use (Calico's), for the help text.
    const METRICS_PORT: u16;
}

/// Logging and metrics flags (flatten into a command line with `#[command(flatten)]`).
pub struct ObserveArgs<E> {
    /// Log filter (tracing EnvFilter syntax); default `info`.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// The metrics-only listener (`none` by default).
    pub metrics_listen: Listen,
    env: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for ObserveArgs<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveArgs")
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

impl<E> Clone for ObserveArgs<E> {
    fn clone(&self) -> Self {
        ObserveArgs {
            log: self.log.clone(),
            log_format: self.log_format,
            metrics_listen: self.metrics_listen,
            env: PhantomData,
        }
    }
}

const LOG: &str = "log";
const LOG_FORMAT: &str = "log_format";
const METRICS_LISTEN: &str = "metrics_listen";

impl<E: ObserveEnv> clap::Args for ObserveArgs<E> {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(LOG)
                .long("log")
                .env(E::LOG)
                .default_value("info")
                .help("Log filter (tracing EnvFilter syntax)."),
        )
        .arg(
            Arg::new(LOG_FORMAT)
                .long("log-format")
                .env(E::LOG_FORMAT)
                .value_parser(clap::value_parser!(LogFormat))
                .default_value("text")
                .help(
                    "Log line format: text (no colour unless a terminal) or json (one \
                     object per line).",
                ),
        )
        .arg(
            Arg::new(METRICS_LISTEN)
                .long("metrics-listen")
                .env(E::METRICS_LISTEN)
                .value_parser(|s: &str| s.parse::<Listen>())
                .default_value("none")
                .help(format!(
                    "Metrics-only listen address for Prometheus (/metrics; k8s/ uses \
                     0.0.0.0:{} as Calico does); \"none\" disables it.",
                    E::METRICS_PORT
                )),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<E> FromArgMatches for ObserveArgs<E> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = |name: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("--{} has no value", name.replace('_', "-")),
            )
        };
        Ok(ObserveArgs {
            log: matches
                .get_one::<String>(LOG)
                .cloned()
                .ok_or_else(|| missing(LOG))?,
            log_format: *matches
                .get_one::<LogFormat>(LOG_FORMAT)
                .ok_or_else(|| missing(LOG_FORMAT))?,
            metrics_listen: *matches
                .get_one::<Listen>(METRICS_LISTEN)
                .ok_or_else(|| missing(METRICS_LISTEN))?,
            env: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::Parser;

    struct TestEnv;
    impl ObserveEnv for TestEnv {
        const LOG: &'static str = "EDGE_CLI_TEST_LOG";
        const LOG_FORMAT: &'static str = "EDGE_CLI_TEST_LOG_FORMAT";
        const METRICS_LISTEN: &'static str = "EDGE_CLI_TEST_METRICS_LISTEN";
        const METRICS_PORT: u16 = 9999;
    }

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        observe: ObserveArgs<TestEnv>,
    }

    #[test]
    fn observe_flags_have_defaults_and_parse() {
        let cli: TestCli = parse(["t"]).unwrap();
        assert_eq!(cli.observe.log, "info");
        assert_eq!(cli.observe.log_format, LogFormat::Text);
        assert_eq!(cli.observe.metrics_listen, Listen(None));
        let cli: TestCli = parse([
            "t",
            "--log=debug",
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9091",
        ])
        .unwrap();
        assert_eq!(cli.observe.log, "debug");
        assert_eq!(cli.observe.log_format, LogFormat::Json);
        assert_eq!(
            cli.observe.metrics_listen.0.unwrap().to_string(),
            "127.0.0.1:9091"
        );
        assert_eq!(
            parse::<TestCli, _, _>(["t", "--log-format", "xml"]).unwrap_err(),
            ExitCode::from(2)
        );
        assert_eq!(
            parse::<TestCli, _, _>(["t", "--help"]).unwrap_err(),
            ExitCode::SUCCESS
        );
        let help = TestCli::command_for_help();
        assert!(help.contains("EDGE_CLI_TEST_LOG_FORMAT"), "{help}");
        assert!(help.contains("0.0.0.0:9999"), "{help}");
    }

    impl TestCli {
        fn command_for_help() -> String {
            <TestCli as clap::CommandFactory>::command()
                .render_long_help()
                .to_string()
        }
    }

    #[test]
    fn a_failed_run_exits_one() {
        let ok: Result<(), Box<dyn Error + Send + Sync>> = Ok(());
        assert_eq!(exit_code("t", ok), ExitCode::SUCCESS);
        let failed: Result<(), Box<dyn Error + Send + Sync>> = Err("broken".into());
        assert_eq!(exit_code("t", failed), ExitCode::FAILURE);
    }
}
