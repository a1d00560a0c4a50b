//! Starting the coordinator: the merged settings turned into the server's configuration, with
//! every value checked, and `baton serve` / `baton migrate` themselves.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;

use baton_server::api::auth::{self, AuthConfig, TokenSpec, Tokens};
use baton_server::api::{
    self, Limits, ServeConfig, DEFAULT_DRAIN, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CLIENT_CONNECTIONS,
};
use baton_server::coordinator::Config;
use baton_server::model::RetryPolicy;
use baton_server::registry::{Policy, RegistryConfig};
use baton_server::store::{self, StoreOptions};
use baton_tx::tls::{self, ClientTls, Role, ServerTls};

use super::args::{MigrateArgs, ServeArgs};
use super::config::{parse_retention, HumanDuration};
use super::{DEFAULT_DATABASE_URL, DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN, NO_AUTH_CONFIGURED};

/// Per-call timeout of steps that set none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a transaction's progress may wait before it is queued to the log.
const MAX_PROGRESS_FLUSH: Duration = Duration::from_secs(10);

impl ServeArgs {
    /// Whether the web console is served (`ui`, on by default).
    pub fn console(&self) -> anyhow::Result<bool> {
        match self.ui.as_deref() {
            None | Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(other) => anyhow::bail!("ui: {other:?} is neither on nor off"),
        }
    }

    /// The server configuration these options describe.
    pub fn to_config(self) -> anyhow::Result<ServeConfig> {
        let args = self.merged()?;
        args.console()?;
        let auth = args.auth()?;
        let listen = args
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"));
        let defaults = Config::default();
        let retry_default = RetryPolicy::default();
        let default_retry = RetryPolicy {
            max_attempts: args
                .default_max_attempts
                .unwrap_or(retry_default.max_attempts)
                .max(1),
            initial_backoff_ms: args
                .default_initial_backoff
                .map_or(retry_default.initial_backoff_ms, HumanDuration::as_millis),
            max_backoff_ms: args
                .default_max_backoff
                .map_or(retry_default.max_backoff_ms, HumanDuration::as_millis),
        };
        if default_retry.max_backoff_ms < default_retry.initial_backoff_ms {
            anyhow::bail!("default_max_backoff must be at least default_initial_backoff");
        }
        let mut static_endpoints: HashMap<String, Vec<String>> = HashMap::new();
        for entry in &args.endpoints {
            let (service, url) = entry.split_once('=').with_context(|| {
                format!("endpoint {entry:?}: expected service=http://host:port")
            })?;
            if service.is_empty() || !baton_server::registry::valid_endpoint(url) {
                anyhow::bail!("endpoint {entry:?}: expected service=http://host:port");
            }
            static_endpoints
                .entry(service.to_string())
                .or_default()
                .push(url.to_string());
        }
        let mut policies: HashMap<String, Policy> = HashMap::new();
        for entry in &args.policies {
            let (service, policy) = entry
                .split_once('=')
                .filter(|(service, _)| !service.is_empty())
                .with_context(|| format!("policy {entry:?}: expected service=POLICY"))?;
            let policy: Policy = policy
                .parse()
                .with_context(|| format!("policy {entry:?}"))?;
            policies.insert(service.to_string(), policy);
        }
        let (tls, participant_tls) = tls_settings(&args)?;
        let registry_default = RegistryConfig::default();
        let limits_default = Limits::default();
        let database_url = args
            .database_url
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let http_listen = match args.http_listen.as_deref() {
            None => Some(DEFAULT_HTTP_LISTEN.parse().expect("default address parses")),
            Some("off") => None,
            Some(text) => Some(text.parse().with_context(|| {
                format!("http_listen: {text:?} is not an address such as 127.0.0.1:7601 (or off)")
            })?),
        };
        let retention = match args.retention.as_deref() {
            None => defaults.retention,
            Some(text) => parse_retention(text).map_err(|e| anyhow::anyhow!("retention: {e}"))?,
        };
        let retention_sweep_interval = match args.retention_sweep.map(HumanDuration::get) {
            None => defaults.retention_sweep_interval,
            Some(Duration::ZERO) => anyhow::bail!("retention_sweep: must be greater than 0"),
            Some(every) => every,
        };
        let retention_batch = match args.retention_batch {
            None => defaults.retention_batch,
            Some(n @ 1..=store::MAX_PURGE_BATCH) => n,
            Some(n) => anyhow::bail!(
                "retention_batch: {n} is not between 1 and {}",
                store::MAX_PURGE_BATCH
            ),
        };
        // SQLite has one writer: a second batch would only wait for the first one's lock.
        let log_writers = match args.log_writers {
            None if store::is_sqlite_url(&database_url) => 1,
            None => defaults.log_writers,
            Some(n @ 1..=64) => n,
            Some(n) => anyhow::bail!("log_writers: {n} is not between 1 and 64"),
        };
        let pipeline_min = match args.log_pipeline_min {
            None => defaults.pipeline_min,
            Some(n) if (1..=defaults.max_batch).contains(&n) => n,
            Some(n) => anyhow::bail!(
                "log_pipeline_min: {n} is not between 1 and {}",
                defaults.max_batch
            ),
        };
        Ok(ServeConfig {
            console: args.console()?,
            listen,
            http_listen,
            database_url: database_url.clone(),
            store: StoreOptions {
                max_connections: args
                    .max_connections
                    .unwrap_or(StoreOptions::default().max_connections)
                    .max(1),
                // Each log writer holds one connection of its own.
                write_connections: log_writers as u32,
                ..StoreOptions::default()
            },
            migrate: !args.no_migrate.unwrap_or(false),
            coordinator: Config {
                id: args
                    .id
                    .unwrap_or_else(|| format!("baton-{}-{}", hostname(), listen.port())),
                address: String::new(),
                default_timeout: args
                    .default_timeout
                    .map_or(DEFAULT_TIMEOUT, HumanDuration::get)
                    .max(Duration::from_millis(1)),
                default_retry,
                max_inflight: args.max_inflight.unwrap_or(defaults.max_inflight).max(1),
                max_waiting: args.max_waiting.unwrap_or(defaults.max_waiting).max(1),
                log_writers,
                pipeline_min,
                lease: args.lease.map_or(defaults.lease, HumanDuration::get),
                claim_interval: args
                    .claim_interval
                    .map(|every| every.get().max(Duration::from_millis(10)))
                    .unwrap_or(defaults.claim_interval),
                progress_flush: match args.progress_flush {
                    Some(wait) if wait.get() > MAX_PROGRESS_FLUSH => {
                        anyhow::bail!("progress_flush: {wait} is more than the limit of 10s")
                    }
                    Some(wait) => wait.get(),
                    None => defaults.progress_flush,
                },
                retention,
                retention_sweep_interval,
                retention_batch,
                ..defaults
            },
            registry: RegistryConfig {
                static_endpoints,
                policies,
                refresh: args
                    .registry_refresh
                    .map(|every| every.get().max(Duration::from_millis(1)))
                    .unwrap_or(registry_default.refresh),
                connect_timeout: args
                    .connect_timeout
                    .map(|timeout| timeout.get().max(Duration::from_millis(1)))
                    .unwrap_or(registry_default.connect_timeout),
                tls: participant_tls,
                ..registry_default
            },
            limits: Limits {
                max_payload_bytes: args
                    .max_payload_bytes
                    .unwrap_or(limits_default.max_payload_bytes),
                max_steps: args.max_steps.unwrap_or(limits_default.max_steps).max(1),
                ..limits_default
            },
            drain: args.drain_timeout.map_or(DEFAULT_DRAIN, HumanDuration::get),
            header_timeout: args.header_timeout.map_or(DEFAULT_HEADER_TIMEOUT, |t| {
                t.get().max(Duration::from_millis(1))
            }),
            max_client_connections: client_connections(args.max_client_connections),
            auth,
            tls,
        })
    }

    /// Tokens from `--auth-token` and `--auth-tokens-file`, or `--no-auth`; one of the two must
    /// be given. Errors name the entry by position or token name, never its text.
    fn auth(&self) -> anyhow::Result<AuthConfig> {
        let mut specs = Vec::new();
        for (i, entry) in self.auth_tokens.iter().enumerate() {
            let spec = entry
                .parse::<TokenSpec>()
                .with_context(|| format!("auth_tokens: entry {} is not valid", i + 1))?;
            specs.push(spec);
        }
        if let Some(path) = &self.auth_tokens_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read auth tokens file {}", path.display()))?;
            let found = auth::parse_token_lines(&text)
                .with_context(|| format!("auth tokens file {} is not valid", path.display()))?;
            if found.is_empty() {
                anyhow::bail!("auth tokens file {} holds no tokens", path.display());
            }
            specs.extend(found);
        }
        match (self.no_auth.unwrap_or(false), specs.is_empty()) {
            (true, true) => Ok(AuthConfig::Disabled),
            (true, false) => {
                anyhow::bail!("give either auth tokens or --no-auth, not both")
            }
            (false, false) => Ok(AuthConfig::Tokens(Tokens::new(specs)?)),
            (false, true) => anyhow::bail!("{NO_AUTH_CONFIGURED}"),
        }
    }
}

/// The TLS settings of the serve flags, with their files read and checked now so that a bad one
/// fails start-up with the flag and the path.
fn tls_settings(args: &ServeArgs) -> anyhow::Result<(Option<ServerTls>, Option<ClientTls>)> {
    let reload = args
        .tls_reload
        .map(|every| every.get().max(Duration::from_millis(10)))
        .unwrap_or(tls::DEFAULT_RELOAD);
    let server = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let mut server = ServerTls::new(cert, key).reload(reload);
            if let Some(ca) = &args.tls_client_ca {
                server = server.client_ca(ca);
            }
            server.check().map_err(|e| {
                let flag = match e.role() {
                    Role::Key => "--tls-key",
                    Role::ClientCa => "--tls-client-ca",
                    _ => "--tls-cert",
                };
                anyhow::anyhow!("{flag}: {e}")
            })?;
            Some(server)
        }
        (None, None) if args.tls_client_ca.is_some() => {
            anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key")
        }
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key"),
        (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert"),
    };
    let client = match (
        &args.participant_ca,
        &args.participant_cert,
        &args.participant_key,
    ) {
        (None, None, None) => None,
        (None, _, _) => {
            anyhow::bail!("--participant-cert and --participant-key need --participant-ca")
        }
        (Some(_), Some(_), None) => anyhow::bail!("--participant-cert needs --participant-key"),
        (Some(_), None, Some(_)) => anyhow::bail!("--participant-key needs --participant-cert"),
        (Some(ca), cert, key) => {
            let mut client = ClientTls::new(ca).reload(reload);
            if let (Some(cert), Some(key)) = (cert, key) {
                client = client.identity(cert, key);
            }
            client.check().map_err(|e| {
                let flag = match e.role() {
                    Role::Key => "--participant-key",
                    Role::Cert => "--participant-cert",
                    _ => "--participant-ca",
                };
                anyhow::anyhow!("{flag}: {e}")
            })?;
            Some(client)
        }
    };
    Ok((server, client))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string())
}

/// File descriptors kept for everything but client connections: database connections, calls to
/// participants, listeners, files.
const RESERVED_FDS: u64 = 256;

/// `--max-client-connections`, or by default as many as the open-file limit leaves room for
/// (at most [`DEFAULT_MAX_CLIENT_CONNECTIONS`], at least 16). A value given that the limit has
/// no room for is kept, with a warning: past it, accepts fail (and pause) until descriptors are
/// free again.
fn client_connections(given: Option<usize>) -> usize {
    let limit = open_file_limit();
    let room = limit
        .map(|limit| usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX));
    match (given, room) {
        (Some(given), Some(room)) if given > room => {
            tracing::warn!(
                max_client_connections = given,
                open_file_limit = limit,
                "the open-file limit leaves room for fewer client connections than \
                 --max-client-connections; raise the limit (ulimit -n) or lower the setting"
            );
            given
        }
        (Some(given), _) => given.max(1),
        (None, Some(room)) => room.clamp(16, DEFAULT_MAX_CLIENT_CONNECTIONS),
        (None, None) => DEFAULT_MAX_CLIENT_CONNECTIONS,
    }
}

/// The process's open-file limit, first raised to its hard limit (a service's default soft
/// limit is often 1,024 while the hard one is far higher); `None` where it cannot be read.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed, which we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // Refused when the hard limit is unlimited (the kernel caps descriptors anyway):
            // the soft limit then stays as it was.
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// Runs the coordinator until SIGTERM or Ctrl-C, then shuts down cleanly.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let no_auth = config.auth == AuthConfig::Disabled;
    // Listened for before the coordinator starts, so that a SIGTERM sent as soon as it says it
    // listens (a scale-in right after a restart) drains it instead of killing it.
    let stop = stop_signal();
    let serving = api::serve(config).await?;
    announce(&format!(
        "baton coordinator listening on {}",
        serving.endpoint()
    ));
    if let Some(http) = serving.http_addr {
        let scheme = if serving.endpoint().starts_with("https") {
            "https"
        } else {
            "http"
        };
        announce(&format!("health and metrics on {scheme}://{http}"));
    }
    if no_auth {
        announce("authentication disabled (--no-auth): every caller may call every method");
    }
    stop.await;
    tracing::info!("shutting down");
    serving.shutdown().await;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C. On Unix both handlers are installed when this is called, not
/// when the future is first polled: a signal in between is kept for it.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Applies the schema migrations and exits.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args
        .database_url
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let log = store::open(&url, &StoreOptions::default()).await?;
    log.migrate().await?;
    crate::cli::print_out(&format!("migrated {}\n", redact(&url)))
}

/// Prints a line about the running coordinator on stdout. A coordinator keeps serving when
/// nobody reads its stdout any more (the pipe it was started with was closed), so a failed
/// write is ignored rather than ending it or panicking as `println!` would.
fn announce(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://baton.db"), "sqlite://baton.db");
    }

    #[test]
    fn defaults_and_static_endpoints() {
        let config = ServeArgs {
            endpoints: vec!["inventory=http://127.0.0.1:9000".into()],
            no_auth: Some(true),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(
            config.registry.static_endpoints["inventory"],
            vec!["http://127.0.0.1:9000"]
        );
        assert!(config.migrate);
        let bad = ServeArgs {
            endpoints: vec!["inventory".into()],
            no_auth: Some(true),
            ..ServeArgs::default()
        };
        assert!(bad.to_config().is_err());
    }

    #[test]
    fn retention_parses_durations_and_off() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(parse_retention("7d"), Ok(Some(7 * day)));
        assert_eq!(parse_retention("12h"), Ok(Some(day / 2)));
        assert_eq!(parse_retention("30m"), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(parse_retention("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_retention("1h30m"),
            Ok(Some(Duration::from_secs(5400)))
        );
        assert_eq!(parse_retention("off"), Ok(None));
        assert_eq!(parse_retention("OFF"), Ok(None));
        for bad in ["", "0s", "7", "7w", "-1d", "forever"] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retention_settings_from_flags_and_file() {
        let config = ServeArgs {
            no_auth: Some(true),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap()
        .coordinator;
        assert_eq!(config.retention, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(config.retention_sweep_interval, Duration::from_secs(60));
        assert_eq!(config.retention_batch, 500);

        let config = ServeArgs {
            retention: Some("90s".into()),
            retention_sweep: Some(Duration::from_millis(200).into()),
            retention_batch: Some(20),
            no_auth: Some(true),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap()
        .coordinator;
        assert_eq!(config.retention, Some(Duration::from_secs(90)));
        assert_eq!(config.retention_sweep_interval, Duration::from_millis(200));
        assert_eq!(config.retention_batch, 20);

        let off = ServeArgs {
            retention: Some("off".into()),
            no_auth: Some(true),
            ..ServeArgs::default()
        };
        assert_eq!(off.to_config().unwrap().coordinator.retention, None);

        for (args, field) in [
            (
                ServeArgs {
                    retention: Some("soon".into()),
                    no_auth: Some(true),
                    ..ServeArgs::default()
                },
                "retention:",
            ),
            (
                ServeArgs {
                    retention_sweep: Some(Duration::ZERO.into()),
                    no_auth: Some(true),
                    ..ServeArgs::default()
                },
                "retention_sweep:",
            ),
            (
                ServeArgs {
                    retention_batch: Some(0),
                    no_auth: Some(true),
                    ..ServeArgs::default()
                },
                "retention_batch:",
            ),
            (
                ServeArgs {
                    retention_batch: Some(10_001),
                    no_auth: Some(true),
                    ..ServeArgs::default()
                },
                "retention_batch:",
            ),
        ] {
            let error = args.to_config().unwrap_err().to_string();
            assert!(error.starts_with(field), "{error}");
        }

        let file: ServeArgs =
            toml::from_str("retention = \"12h\"\nretention_sweep = \"5s\"\nretention_batch = 100")
                .unwrap();
        assert_eq!(file.retention.as_deref(), Some("12h"));
        assert_eq!(file.retention_sweep, Some(Duration::from_secs(5).into()));
        assert_eq!(file.retention_batch, Some(100));
    }

    #[test]
    fn log_writer_settings_by_store_and_bounds() {
        let config = |url: &str, writers: Option<usize>, pipeline: Option<usize>| {
            ServeArgs {
                database_url: Some(url.into()),
                log_writers: writers,
                log_pipeline_min: pipeline,
                no_auth: Some(true),
                ..ServeArgs::default()
            }
            .to_config()
        };
        let pg = config("postgres://127.0.0.1/baton", None, None).unwrap();
        assert_eq!(pg.coordinator.log_writers, 2);
        assert_eq!(pg.store.write_connections, 2);
        assert_eq!(pg.coordinator.pipeline_min, 32);
        let lite = config("sqlite://baton.db", None, None).unwrap();
        assert_eq!(lite.coordinator.log_writers, 1);
        let set = config("sqlite://baton.db", Some(3), Some(8)).unwrap();
        assert_eq!(set.coordinator.log_writers, 3);
        assert_eq!(set.coordinator.pipeline_min, 8);
        for (writers, pipeline, field) in [
            (Some(0), None, "log_writers:"),
            (Some(65), None, "log_writers:"),
            (None, Some(0), "log_pipeline_min:"),
            (None, Some(513), "log_pipeline_min:"),
        ] {
            let error = config("sqlite://baton.db", writers, pipeline)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(field), "{error}");
        }
    }

    #[test]
    fn policies_and_registry_timing() {
        let config = ServeArgs {
            policies: vec![
                "inventory=least_outstanding".into(),
                "billing=consistent_hash:label=customer".into(),
            ],
            registry_refresh: Some(Duration::from_millis(200).into()),
            connect_timeout: Some(Duration::from_millis(300).into()),
            no_auth: Some(true),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap();
        let registry = &config.registry;
        assert_eq!(registry.policies["inventory"], Policy::LeastOutstanding);
        assert_eq!(
            registry.policies["billing"],
            Policy::ConsistentHash {
                label: Some("customer".into())
            }
        );
        assert_eq!(registry.refresh, Duration::from_millis(200));
        assert_eq!(registry.connect_timeout, Duration::from_millis(300));
        for bad in ["inventory", "=random", "inventory=fastest"] {
            let args = ServeArgs {
                policies: vec![bad.into()],
                no_auth: Some(true),
                ..ServeArgs::default()
            };
            assert!(args.to_config().is_err(), "{bad}");
        }
        let file: ServeArgs =
            toml::from_str("policies = [\"inventory=random\"]\nregistry_refresh = \"50ms\"")
                .unwrap();
        assert_eq!(file.policies, vec!["inventory=random"]);
        assert_eq!(
            file.registry_refresh,
            Some(Duration::from_millis(50).into())
        );
    }

    #[test]
    fn auth_must_be_chosen() {
        let err = ServeArgs::default().to_config().unwrap_err().to_string();
        assert_eq!(err, NO_AUTH_CONFIGURED);
        let open = ServeArgs {
            no_auth: Some(true),
            ..ServeArgs::default()
        };
        assert_eq!(open.to_config().unwrap().auth, AuthConfig::Disabled);
        let hash = auth::TokenHash::of("secret");
        let both = ServeArgs {
            no_auth: Some(true),
            auth_tokens: vec![format!("app:client={hash}")],
            ..ServeArgs::default()
        };
        assert!(both
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("not both"));
    }

    #[test]
    fn auth_tokens_from_flags_file_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let (a, b) = (auth::TokenHash::of("a"), auth::TokenHash::of("b"));
        std::fs::write(&file, format!("# operators\nops:operator={b}\n")).unwrap();
        let config = ServeArgs {
            auth_tokens: vec![format!("app:client:shop={a}")],
            auth_tokens_file: Some(file.clone()),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap();
        let AuthConfig::Tokens(tokens) = config.auth else {
            panic!("tokens expected");
        };
        let names: Vec<&str> = tokens.specs().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["app", "ops"]);

        let toml_file = dir.path().join("baton.toml");
        std::fs::write(
            &toml_file,
            format!("auth_tokens = [\"app:client={a}\"]\nno_auth = false\n"),
        )
        .unwrap();
        let config = ServeArgs {
            config: Some(toml_file),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap();
        assert!(matches!(config.auth, AuthConfig::Tokens(_)));

        // A plain token given where the hash belongs is refused without being repeated.
        let err = ServeArgs {
            auth_tokens: vec!["app:client=hunter2".into()],
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("entry 1") && !text.contains("hunter2"),
            "{text}"
        );
        std::fs::write(&file, "# nothing\n").unwrap();
        let err = ServeArgs {
            auth_tokens_file: Some(file),
            ..ServeArgs::default()
        }
        .to_config()
        .unwrap_err();
        assert!(err.to_string().contains("holds no tokens"), "{err}");
    }

    #[test]
    fn tls_flags_come_in_pairs_and_name_the_flag() {
        let with = |f: fn(&mut ServeArgs)| {
            let mut args = ServeArgs {
                no_auth: Some(true),
                ..ServeArgs::default()
            };
            f(&mut args);
            args.to_config().map(|_| ()).unwrap_err().to_string()
        };
        assert_eq!(
            with(|a| a.tls_cert = Some("c.pem".into())),
            "--tls-cert needs --tls-key"
        );
        assert_eq!(
            with(|a| a.tls_key = Some("k.pem".into())),
            "--tls-key needs --tls-cert"
        );
        assert_eq!(
            with(|a| a.tls_client_ca = Some("ca.pem".into())),
            "--tls-client-ca needs --tls-cert and --tls-key"
        );
        assert_eq!(
            with(|a| a.participant_cert = Some("c.pem".into())),
            "--participant-cert and --participant-key need --participant-ca"
        );
        let err = with(|a| {
            a.tls_cert = Some("/nonexistent/cert.pem".into());
            a.tls_key = Some("/nonexistent/key.pem".into());
        });
        assert!(
            err.starts_with("--tls-cert: certificate file /nonexistent/cert.pem: cannot read"),
            "{err}"
        );
        let err = with(|a| a.participant_ca = Some("/nonexistent/ca.pem".into()));
        assert!(
            err.starts_with("--participant-ca: CA certificate file"),
            "{err}"
        );
        let file: ServeArgs = toml::from_str(
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\n\
             participant_ca = \"p.pem\"\nparticipant_cert = \"pc.pem\"\n\
             participant_key = \"pk.pem\"\ntls_reload = \"100ms\"",
        )
        .unwrap();
        assert_eq!(file.tls_client_ca, Some("ca.pem".into()));
        assert_eq!(file.participant_key, Some("pk.pem".into()));
        assert_eq!(file.tls_reload, Some(Duration::from_millis(100).into()));
    }
}
