//! docs/operations.md documents every flag of every binary: for each long flag that
//! typha (every subcommand), felix-client and kube-sim accept, taken from clap's own
//! description of the command line, some line of the page names the flag in backticks
//! together with its environment variable and its default. A flag added without its
//! documentation fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;

/// One documented setting.
#[derive(Debug)]
struct Setting {
    binary: String,
    long: String,
    env: Option<String>,
    default: Option<String>,
}

fn settings(binary: &str, command: &clap::Command, out: &mut Vec<Setting>) {
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || long == "help" || long == "version" {
            continue;
        }
        let default = arg
            .get_action()
            .takes_values()
            .then(|| {
                arg.get_default_values()
                    .first()
                    .map(|d| d.to_string_lossy().into_owned())
            })
            .flatten();
        out.push(Setting {
            binary: binary.to_string(),
            long: long.to_string(),
            env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            default,
        });
    }
    for sub in command.get_subcommands() {
        settings(&format!("{binary} {}", sub.get_name()), sub, out);
    }
}

fn all_settings() -> Vec<Setting> {
    let mut out = Vec::new();
    settings("typha", &typha::config::Cli::command(), &mut out);
    settings(
        "felix-client",
        &felix_client::config::Cli::command(),
        &mut out,
    );
    settings("kube-sim", &kube_sim::cli::Args::command(), &mut out);
    settings(
        "felix-cni install",
        &felix_cni::cli::InstallArgs::command(),
        &mut out,
    );
    settings(
        "felix-client cleanup",
        &felix_client::cleanup_cli::CleanupArgs::command(),
        &mut out,
    );
    out
}

fn operations_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn operations_md_documents_every_flag_env_var_and_default() {
    let doc = operations_md();
    let settings = all_settings();
    assert!(settings.len() > 30, "clap introspection found too little");
    let mut undocumented = Vec::new();
    for s in &settings {
        let flag = format!("`--{}`", s.long);
        let documented = doc.lines().any(|line| {
            line.contains(&flag)
                && s.env
                    .as_ref()
                    .is_none_or(|e| line.contains(&format!("`{e}`")))
                && s.default.as_ref().is_none_or(|d| line.contains(d.as_str()))
        });
        if !documented {
            undocumented.push(format!(
                "{}: {flag} (env {:?}, default {:?})",
                s.binary, s.env, s.default
            ));
        }
    }
    assert!(
        undocumented.is_empty(),
        "docs/operations.md lacks a line naming each of these flags with its env var and default:\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn the_check_fails_for_an_undocumented_flag() {
    // The matcher itself: a made-up flag is not found, a real one is.
    let doc = operations_md();
    assert!(!doc.contains("`--no-such-flag`"));
    assert!(
        doc.lines()
            .any(|l| l.contains("`--listen`") && l.contains("`TYPHA_LISTEN`"))
    );
}

/// The README's "Running the pieces by hand" commands, as written: each `target/release/`
/// line with its continuation lines joined, the trailing `&` dropped.
fn readme_by_hand_commands() -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let block = readme
        .split("## Running the pieces by hand")
        .nth(1)
        .and_then(|rest| rest.split("```sh").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README has a by-hand block");
    block
        .replace("\\\n", " ")
        .lines()
        .filter(|line| line.starts_with("target/release/"))
        .map(|line| {
            let line = line.trim().trim_end_matches('&');
            let mut argv: Vec<String> = line.split_whitespace().map(String::from).collect();
            argv[0] = argv[0].trim_start_matches("target/release/").to_string();
            argv
        })
        .collect()
}

#[test]
fn readme_by_hand_commands_parse_and_kube_sim_seeds_as_written() {
    let commands = readme_by_hand_commands();
    let mut seen = BTreeSet::new();
    for argv in &commands {
        let command = match argv[0].as_str() {
            "typha" => typha::config::Cli::command(),
            "felix-client" => felix_client::config::Cli::command(),
            "kube-sim" => kube_sim::cli::Args::command(),
            other => panic!("README runs an unknown binary {other}"),
        };
        if let Err(error) = command.try_get_matches_from(argv) {
            panic!("README command {argv:?} does not parse:\n{error}");
        }
        seen.insert(argv[0].clone());
        if argv[0] == "kube-sim" {
            // Seeding is where the README's command once failed (no namespace seeded):
            // run it as written, stopping after the seed instead of serving.
            let mut run = argv.clone();
            run.push("--exit-after-seed".into());
            assert_eq!(
                kube_sim::cli::run(&run),
                std::process::ExitCode::SUCCESS,
                "kube-sim as the README runs it: {run:?}"
            );
        }
    }
    let expected: BTreeSet<String> = ["typha", "felix-client", "kube-sim"]
        .map(String::from)
        .into();
    assert_eq!(seen, expected, "the README runs each binary by hand");
}

#[test]
fn release_binaries_carry_no_debug_info() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let release = manifest
        .split("[profile.release]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [profile.release] section");
    let settings: Vec<&str> = release.lines().map(str::trim).collect();
    assert!(
        settings.contains(&"debug = 0"),
        "[profile.release]:{release}"
    );
    assert!(
        settings.contains(&"strip = \"debuginfo\""),
        "[profile.release]:{release}"
    );
}
