//! Tests of the command line and its validation.

use super::*;

fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut argv = vec!["felix-client"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
}

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    cli(args).unwrap().validate()
}

const TLS: [&str; 6] = ["--tls-ca", "ca", "--tls-cert", "c", "--tls-key", "k"];

#[test]
fn node_name_is_required_and_checked() {
    assert!(cli(&[]).is_err());
    assert!(matches!(
        parse(&["--node-name", ""]),
        Err(ConfigError::NodeName)
    ));
    assert!(matches!(
        parse(&["--node-name", "a b"]),
        Err(ConfigError::NodeName)
    ));
}

#[test]
fn no_typha_means_local_mode_and_rejects_typha_flags() {
    let config = parse(&["--node-name", "n1"]).unwrap();
    assert!(matches!(config.source, Source::Local { kubeconfig: None }));
    assert_eq!(config.dataplane, Dataplane::Iptables);
    assert_eq!(config.mode, Mode::PolicyOnly);
    assert!(matches!(
        parse(&["--node-name", "n1", "--tls-ca", "x"]),
        Err(ConfigError::TyphaFlagsWithoutTypha)
    ));
    assert!(matches!(
        parse(&["--node-name", "n1", "--insecure-plaintext"]),
        Err(ConfigError::TyphaFlagsWithoutTypha)
    ));
}

#[test]
fn typha_needs_complete_tls_or_explicit_plaintext() {
    let addr = ["--node-name", "n1", "--typha-addr", "typha:5473"];
    assert!(matches!(
        parse(&addr),
        Err(ConfigError::Tls(TlsFlagsError::Incomplete))
    ));
    let mut tls = addr.to_vec();
    tls.extend_from_slice(&TLS);
    let Source::Typha {
        target: TyphaTarget::Addresses(addresses),
        transport,
    } = parse(&tls).unwrap().source
    else {
        panic!()
    };
    assert_eq!(addresses, vec!["typha:5473"]);
    // No identity flags: hostname verification.
    assert!(matches!(transport, TransportChoice::Tls(_, ref id) if id.is_empty()));
    tls.extend_from_slice(&["--typha-cn", "typha-server"]);
    let Source::Typha { transport, .. } = parse(&tls).unwrap().source else {
        panic!()
    };
    assert!(
        matches!(transport, TransportChoice::Tls(_, ref id) if id.cn.as_deref() == Some("typha-server"))
    );

    let mut plain = addr.to_vec();
    plain.push("--insecure-plaintext");
    assert!(matches!(
        parse(&plain).unwrap().source,
        Source::Typha {
            transport: TransportChoice::Plaintext,
            ..
        }
    ));
    plain.extend_from_slice(&["--typha-cn", "x"]);
    assert!(matches!(
        parse(&plain),
        Err(ConfigError::Tls(TlsFlagsError::Contradictory))
    ));
}

#[test]
fn addresses_are_split_and_checked() {
    let ok = parse(&[
        "--node-name",
        "n",
        "--typha-addr",
        "a:1,[::1]:5473,10.0.0.1:2",
        "--insecure-plaintext",
    ]);
    let Source::Typha {
        target: TyphaTarget::Addresses(addresses),
        ..
    } = ok.unwrap().source
    else {
        panic!()
    };
    assert_eq!(addresses, vec!["a:1", "[::1]:5473", "10.0.0.1:2"]);
    for bad in [
        "nohost", ":5473", "a:0", "a:99999", "::1:5473", "a:b", "a:1,",
    ] {
        let result = parse(&[
            "--node-name",
            "n",
            "--typha-addr",
            bad,
            "--insecure-plaintext",
        ]);
        assert!(
            matches!(result, Err(ConfigError::BadAddress(_))),
            "{bad}: {result:?}"
        );
    }
}

#[test]
fn enums_and_durations_parse_and_are_checked() {
    let config = parse(&[
        "--node-name",
        "n",
        "--dataplane",
        "none",
        "--mode",
        "networking",
    ])
    .unwrap();
    assert_eq!(
        (config.dataplane, config.mode),
        (Dataplane::None, Mode::Networking)
    );
    assert!(cli(&["--node-name", "n", "--dataplane", "ebpf"]).is_err());
    let config = parse(&[
        "--node-name",
        "n",
        "--backoff-min",
        "50ms",
        "--backoff-max",
        "1s",
    ])
    .unwrap();
    assert_eq!(config.backoff_min, Duration::from_millis(50));
    assert!(matches!(
        parse(&[
            "--node-name",
            "n",
            "--backoff-min",
            "5s",
            "--backoff-max",
            "1s"
        ]),
        Err(ConfigError::Invalid(_))
    ));
    assert!(matches!(
        parse(&["--node-name", "n", "--read-timeout", "0s"]),
        Err(ConfigError::Invalid(_))
    ));
    assert!(cli(&["--node-name", "n", "--read-timeout", "soon"]).is_err());
}

#[test]
fn typha_service_is_an_alternative_to_addresses() {
    let base = ["--node-name", "n", "--insecure-plaintext"];
    let mut args = base.to_vec();
    args.extend_from_slice(&["--typha-service", "kube-system/calico-typha"]);
    let config = parse(&args).unwrap();
    let Source::Typha {
        target: TyphaTarget::Service {
            discovery,
            kubeconfig,
        },
        ..
    } = config.source
    else {
        panic!()
    };
    assert_eq!(
        discovery,
        DiscoveryConfig::new("kube-system", "calico-typha")
    );
    assert_eq!(kubeconfig, None);
    assert_eq!(config.start_timeout, Some(Duration::from_secs(300)));

    args.extend_from_slice(&["--typha-port-name", "grpc", "--kubeconfig", "/k"]);
    let Source::Typha {
        target: TyphaTarget::Service {
            discovery,
            kubeconfig,
        },
        ..
    } = parse(&args).unwrap().source
    else {
        panic!()
    };
    assert_eq!(discovery.port_name, "grpc");
    assert_eq!(kubeconfig, Some(PathBuf::from("/k")));

    // Not both, and well formed.
    let mut both = args.clone();
    both.extend_from_slice(&["--typha-addr", "a:1"]);
    assert!(cli(&both).is_err());
    let mut bad = base.to_vec();
    bad.extend_from_slice(&["--typha-service", "calico-typha"]);
    assert!(matches!(parse(&bad), Err(ConfigError::Service(_))));
    // A service alone makes TLS flags legal (no TyphaFlagsWithoutTypha).
    assert!(
        parse(&[
            "--node-name",
            "n",
            "--typha-service",
            "a/b",
            "--typha-cn",
            "x"
        ])
        .is_err_and(|e| matches!(e, ConfigError::Tls(_)))
    );
}

#[test]
fn start_timeout_and_health_listen() {
    let config = parse(&[
        "--node-name",
        "n",
        "--typha-start-timeout",
        "0s",
        "--health-listen",
        "none",
    ])
    .unwrap();
    assert_eq!((config.start_timeout, config.health_listen), (None, None));
    let config = parse(&["--node-name", "n"]).unwrap();
    assert_eq!(
        config.health_listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9099)))
    );
    let config = parse(&["--node-name", "n", "--typha-start-timeout", "2s"]).unwrap();
    assert_eq!(config.start_timeout, Some(Duration::from_secs(2)));
    assert!(matches!(
        parse(&["--node-name", "n", "--health-listen", "localhost"]),
        Err(ConfigError::HealthListen(_))
    ));
}
