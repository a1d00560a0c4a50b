//! Command-line parsing.

use clap::Parser;

use super::*;
use baton_tx::client::TxState;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("baton").chain(args.iter().copied()))
}

#[test]
fn the_command_line_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn tx_list_filters() {
    let cli = parse(&[
        "tx",
        "list",
        "--state",
        "failed",
        "--state",
        "running",
        "--label",
        "order=42",
        "--since",
        "1h",
        "--limit",
        "10",
        "--page-token",
        "p2",
        "--json",
    ])
    .unwrap();
    let Command::Tx { remote, command } = cli.command else {
        panic!("expected tx, got {:?}", cli.command);
    };
    assert!(remote.json);
    let TxCommand::List {
        states,
        labels,
        since,
        limit,
        page_token,
    } = command
    else {
        panic!("expected tx list, got {command:?}");
    };
    assert_eq!(states, [TxState::Failed, TxState::Running]);
    assert_eq!(labels, [("order".to_string(), "42".to_string())]);
    let ago = std::time::SystemTime::now()
        .duration_since(since.unwrap())
        .unwrap();
    assert!(ago.as_secs() >= 3599 && ago.as_secs() < 3700, "{ago:?}");
    assert_eq!(limit, Some(10));
    assert_eq!(page_token.as_deref(), Some("p2"));
}

#[test]
fn remote_options_go_before_or_after_the_subcommand() {
    let cli = parse(&["tx", "--addr", "http://127.0.0.1:9", "show", "abc"]).unwrap();
    let Command::Tx { remote, command } = cli.command else {
        panic!("expected tx");
    };
    assert_eq!(remote.addr, "http://127.0.0.1:9");
    assert!(!remote.json);
    assert_eq!(command, TxCommand::Show { id: "abc".into() });

    let cli = parse(&[
        "participants",
        "list",
        "--service",
        "inventory",
        "--addr",
        "http://h:1",
    ])
    .unwrap();
    let Command::Participants { remote, command } = cli.command else {
        panic!("expected participants");
    };
    assert_eq!(remote.addr, "http://h:1");
    assert_eq!(
        command,
        ParticipantsCommand::List {
            service: Some("inventory".into())
        }
    );
}

#[test]
fn other_tx_verbs() {
    let cli = parse(&["tx", "cancel", "abc", "--reason", "customer asked"]).unwrap();
    let Command::Tx { command, .. } = cli.command else {
        panic!("expected tx");
    };
    assert_eq!(
        command,
        TxCommand::Cancel {
            id: "abc".into(),
            reason: "customer asked".into()
        }
    );
    assert!(matches!(
        parse(&["tx", "retry", "abc"]).unwrap().command,
        Command::Tx {
            command: TxCommand::Retry { .. },
            ..
        }
    ));
    assert!(matches!(
        parse(&["tx", "events", "abc"]).unwrap().command,
        Command::Tx {
            command: TxCommand::Events { .. },
            ..
        }
    ));
    assert!(matches!(
        parse(&["serve"]).unwrap().command,
        Command::Serve(_)
    ));
    assert!(matches!(
        parse(&["migrate"]).unwrap().command,
        Command::Migrate(_)
    ));
    let cli = parse(&["--log-format", "json", "migrate"]).unwrap();
    assert_eq!(cli.log_format, LogFormat::Json);
}

#[test]
fn bad_arguments_are_rejected_with_the_reason() {
    let err = parse(&["tx", "list", "--state", "done"]).unwrap_err();
    assert!(err.to_string().contains("unknown state \"done\""), "{err}");
    let err = parse(&["tx", "list", "--label", "order"]).unwrap_err();
    assert!(err.to_string().contains("key=value"), "{err}");
    let err = parse(&["tx", "list", "--since", "soon"]).unwrap_err();
    assert!(err.to_string().contains("RFC 3339"), "{err}");
    assert!(parse(&["tx", "show"]).is_err(), "an id is required");
    assert!(parse(&["tx"]).is_err(), "a verb is required");
}

#[test]
fn tx_purge_takes_an_age_and_a_batch() {
    let cli = parse(&["tx", "purge", "--older-than", "7d", "--batch", "100"]).unwrap();
    let Command::Tx { command, .. } = cli.command else {
        panic!("expected tx, got {:?}", cli.command);
    };
    assert_eq!(
        command,
        TxCommand::Purge {
            older_than: std::time::Duration::from_secs(7 * 24 * 3600),
            batch: Some(100),
        }
    );
    for bad in [
        &["tx", "purge"][..],
        &["tx", "purge", "--older-than", "0s"],
        &["tx", "purge", "--older-than", "7"],
        &["tx", "purge", "--older-than", "soon"],
    ] {
        let error = parse(bad).unwrap_err().to_string();
        assert!(error.contains("--older-than"), "{bad:?}: {error}");
    }
}

#[test]
fn tx_retry_help_names_the_state_it_accepts() {
    use clap::CommandFactory;
    let cli = Cli::command();
    let retry = cli
        .find_subcommand("tx")
        .and_then(|tx| tx.find_subcommand("retry"))
        .expect("tx retry");
    let about = retry.get_about().map(|a| a.to_string()).unwrap_or_default();
    assert!(about.starts_with("Resume a failed transaction"), "{about}");
    assert!(!about.contains("stuck"), "{about}");
}

#[test]
fn coordinator_addresses_give_the_host_and_port_to_probe() {
    assert_eq!(
        host_port("http://127.0.0.1:7600"),
        Some(("127.0.0.1".to_string(), 7600))
    );
    assert_eq!(host_port("https://[::1]"), Some(("::1".to_string(), 443)));
    assert_eq!(host_port("not an address"), None);
}

#[test]
fn socket_errors_read_as_their_kind() {
    // ECONNREFUSED as Linux numbers it.
    #[cfg(target_os = "linux")]
    let refused = std::io::Error::from_raw_os_error(111);
    #[cfg(not(target_os = "linux"))]
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(io_reason(&refused), "connection refused");
    let lookup = std::io::Error::other("failed to lookup address information");
    assert_eq!(io_reason(&lookup), "failed to lookup address information");
}

#[test]
fn the_console_is_on_unless_ui_is_off() {
    let serve = |args: &[&str]| match parse(args).unwrap().command {
        Command::Serve(args) => args,
        _ => unreachable!("serve parses as serve"),
    };
    assert!(serve(&["serve"]).console().unwrap());
    assert!(serve(&["serve", "--ui", "on"]).console().unwrap());
    assert!(!serve(&["serve", "--ui", "off"]).console().unwrap());
    let bad = serve(&["serve", "--ui", "maybe", "--no-auth"]).to_config();
    assert!(bad.unwrap_err().to_string().contains("ui: \"maybe\""));
    // The config file's key, under the flag.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, "ui = \"off\"\n").unwrap();
    let path = file.to_str().unwrap();
    assert!(!serve(&["serve", "--config", path])
        .merged()
        .unwrap()
        .console()
        .unwrap());
    assert!(serve(&["serve", "--config", path, "--ui", "on"])
        .merged()
        .unwrap()
        .console()
        .unwrap());
}

#[test]
fn worker_threads_default_per_command_and_can_be_set() {
    let serve = Cli::try_parse_from(["baton", "serve"]).unwrap();
    assert_eq!(default_worker_threads(&serve.command, 2), 2);
    let bench = Cli::try_parse_from(["baton", "bench"]).unwrap();
    assert_eq!(default_worker_threads(&bench.command, 1), 1);
    assert_eq!(default_worker_threads(&bench.command, 2), 1);
    assert_eq!(default_worker_threads(&bench.command, 8), 4);
    let cli = Cli::try_parse_from(["baton", "serve", "--worker-threads", "3"]).unwrap();
    assert_eq!(cli.worker_threads(), 3);
    let err = Cli::try_parse_from(["baton", "--worker-threads", "0", "serve"]).unwrap_err();
    assert!(err.to_string().contains("worker-threads"), "{err}");
}
