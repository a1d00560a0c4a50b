//! Participant services and their endpoints: which endpoint a call goes to, and the reused gRPC
//! channel or pooled HTTP client to it (an endpoint URL with a path is an HTTP/JSON participant,
//! see [`crate::model::parse_endpoint`]; both kinds are balanced and ejected alike).
//!
//! Endpoints come from the registry table (`RegisterParticipant`, with expiry) and from static
//! configuration. A service's endpoint list is cached for [`RegistryConfig::refresh`] so that a
//! call does not read the database, yet an endpoint that registers, deregisters or stops
//! heartbeating gains or loses traffic within that time. Per service a [`Policy`] picks the
//! endpoint ([`policy`]); endpoints that keep failing at the transport level are ejected for a
//! while ([`health`]).

pub mod health;
pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio_rustls::rustls;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::model::Target;
use crate::store::{Participants, StoreError};
use crate::tls::{ClientTls, Reloading, TlsError};
use crate::transport::http::HttpParticipant;
use crate::transport::{with_keepalive, GrpcChannel};

pub use health::HealthConfig;
pub use policy::{PickKey, Policy};

use health::Health;
use policy::{Balancer, Candidate};

/// Why no endpoint could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The service has no registered or configured endpoint (now).
    #[error("no endpoint is registered for participant service {0:?}")]
    NoEndpoint(String),
    /// The endpoint text is not a URL tonic can dial.
    #[error("endpoint {0:?} is not a valid http:// or https:// url")]
    BadEndpoint(String),
    /// An `https://` endpoint, but no CA to check its certificate against.
    #[error("endpoint {0:?} is https but no participant CA is configured (--participant-ca)")]
    NoTls(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registry settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Endpoints configured statically, by service.
    pub static_endpoints: HashMap<String, Vec<String>>,
    /// Load-balancing policy by service; services not named use [`Policy::RoundRobin`].
    pub policies: HashMap<String, Policy>,
    /// How long a service's endpoint list is reused before it is read again.
    pub refresh: Duration,
    /// TCP connect timeout for participant channels.
    pub connect_timeout: Duration,
    /// When failing endpoints are ejected.
    pub health: HealthConfig,
    /// TLS for `https://` endpoints: the CA their certificates must chain to, and the client
    /// certificate to present to participants that ask for one.
    pub tls: Option<ClientTls>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            static_endpoints: HashMap::new(),
            policies: HashMap::new(),
            refresh: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(2000),
            health: HealthConfig::default(),
            tls: None,
        }
    }
}

/// At most this many endpoints keep a channel; past it the cache starts over. Endpoints that
/// leave a service's list lose theirs at once; this bounds direct endpoints named in definitions.
const MAX_CHANNELS: usize = 4096;
/// At most this many services are cached (names come from definitions); past it, start over.
const MAX_SERVICES: usize = 4096;

/// A service endpoint as the registry lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEndpoint {
    /// Where to dial it, such as `http://127.0.0.1:9000`.
    pub url: String,
    /// Share under the weighted policy; static endpoints have 1.
    pub weight: u32,
}

/// One service's cached endpoint list and its balancer.
struct Service {
    read_at: Instant,
    /// Set while one caller re-reads the list; others keep using the old one meanwhile. A
    /// timestamp rather than a flag, so a refresh whose caller was cancelled is not waited for
    /// forever.
    refreshing_since: Option<Instant>,
    endpoints: Arc<Vec<ServiceEndpoint>>,
    balancer: Balancer,
}

/// How calls reach one endpoint.
#[derive(Clone, Debug)]
pub enum ParticipantChannel {
    /// A gRPC participant (an endpoint URL without a path).
    Grpc(GrpcChannel),
    /// An HTTP/JSON participant (an endpoint URL with a path): pooled HTTP/1.1 connections.
    Http(HttpParticipant),
}

/// The connections of one endpoint.
enum Door {
    /// Calls take these in turn: each channel is one HTTP/2 connection whose framing one task
    /// does, so a busy endpoint's calls are spread over several instead of queueing on one.
    Grpc(Box<[GrpcChannel]>),
    /// hyper-util's pool opens and reuses connections itself.
    Http(HttpParticipant),
}

/// What the registry keeps per endpoint URL: the channel and what the balancer needs to know.
struct Conn {
    door: Door,
    next: AtomicUsize,
    /// The TLS files' generation the channel was made with (0 for plain text).
    tls_generation: u64,
    /// Whether the endpoint is `https://` or `grpcs://`, and whether it is an HTTP/JSON one:
    /// which TLS files' generation it follows.
    tls: bool,
    http: bool,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

impl Conn {
    /// The next channel in turn.
    fn channel(&self) -> ParticipantChannel {
        match &self.door {
            Door::Grpc(channels) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % channels.len().max(1);
                ParticipantChannel::Grpc(channels[i].clone())
            }
            Door::Http(client) => ParticipantChannel::Http(client.clone()),
        }
    }
}

/// HTTP/2 connections per endpoint: one per core (at most 4), so that calls to one endpoint are
/// framed on every core.
fn channels_per_endpoint() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Resolves targets to endpoints and keeps lazily connected channels to each endpoint.
pub struct Registry {
    store: Arc<dyn Participants>,
    config: RegistryConfig,
    services: Mutex<HashMap<String, Service>>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// Loaded from `config.tls` by [`Registry::start_tls`].
    tls: OnceLock<Arc<Reloading<ClientTlsConfig>>>,
    /// The same files for HTTP/JSON participants (rustls directly).
    http_tls: OnceLock<Arc<Reloading<rustls::ClientConfig>>>,
}

/// The endpoint chosen for one call, with its channel. While it lives the call counts as in
/// flight to that endpoint (for `least_outstanding`); report the call's transport outcome with
/// [`Picked::report`] so that failing endpoints are ejected.
pub struct Picked {
    /// The endpoint URL.
    pub endpoint: String,
    /// The reused channel to it.
    pub channel: ParticipantChannel,
    conn: Arc<Conn>,
    health: HealthConfig,
}

impl Picked {
    fn new(endpoint: String, conn: Arc<Conn>, health: HealthConfig) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        Picked {
            endpoint,
            channel: conn.channel(),
            conn,
            health,
        }
    }

    /// Records whether the call reached the endpoint: `true` for any answer from it, `false`
    /// for a transport failure (no connection, no answer in time).
    pub fn report(&self, reached: bool) {
        let mut health = lock(&self.conn.health);
        if reached {
            health.succeeded();
        } else if let Some(length) = health.failed(Instant::now(), &self.health) {
            tracing::warn!(
                endpoint = %self.endpoint,
                ejected_ms = length.as_millis() as u64,
                "participant endpoint keeps failing; ejected for a while"
            );
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Picked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Picked")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means a panic elsewhere; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// A registry that reads registrations from `store` and otherwise uses `config`.
    pub fn new(store: Arc<dyn Participants>, config: RegistryConfig) -> Self {
        Registry {
            store,
            config,
            services: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            tls: OnceLock::new(),
            http_tls: OnceLock::new(),
        }
    }

    /// Reads the TLS files of `config.tls`, if any, and keeps re-reading them: channels made
    /// after a change use the new files. Without it, `https://` endpoints cannot be called.
    pub async fn start_tls(&self) -> Result<(), TlsError> {
        if let Some(tls) = &self.config.tls {
            let loaded = tls.start().await?;
            let _ = self.tls.set(loaded);
            let loaded = tls.start_rustls().await?;
            let _ = self.http_tls.set(loaded);
        }
        Ok(())
    }

    /// The endpoints of `service` now (registered and static), from the cache when fresh.
    ///
    /// When the list is stale one caller re-reads it while the others go on with the old list,
    /// and a failed read also falls back to the old list: a database hiccup should not stop
    /// calls to endpoints that were there a moment ago.
    pub async fn endpoints(
        &self,
        service: &str,
    ) -> Result<Arc<Vec<ServiceEndpoint>>, ResolveError> {
        let now = Instant::now();
        let stale = {
            let mut services = lock(&self.services);
            match services.get_mut(service) {
                Some(s) if now.duration_since(s.read_at) < self.config.refresh => {
                    return Ok(s.endpoints.clone())
                }
                Some(s)
                    if s.refreshing_since
                        .is_some_and(|t| now.duration_since(t) < self.config.refresh) =>
                {
                    return Ok(s.endpoints.clone())
                }
                Some(s) => {
                    s.refreshing_since = Some(now);
                    Some(s.endpoints.clone())
                }
                None => None,
            }
        };
        let read = self.read_endpoints(service).await;
        let endpoints = match (read, stale) {
            (Ok(e), _) => Arc::new(e),
            (Err(error), Some(stale)) => {
                tracing::warn!(%service, %error, "cannot re-read participant endpoints; using the last list");
                let mut services = lock(&self.services);
                if let Some(s) = services.get_mut(service) {
                    s.refreshing_since = None;
                }
                return Ok(stale);
            }
            (Err(error), None) => return Err(error),
        };
        let removed = self.store_list(service, endpoints.clone());
        self.forget(removed);
        Ok(endpoints)
    }

    async fn read_endpoints(&self, service: &str) -> Result<Vec<ServiceEndpoint>, ResolveError> {
        let mut endpoints: Vec<ServiceEndpoint> = self
            .store
            .list_participants(Some(service))
            .await?
            .into_iter()
            .map(|p| ServiceEndpoint {
                url: p.endpoint,
                weight: p.weight.max(1),
            })
            .collect();
        if let Some(fixed) = self.config.static_endpoints.get(service) {
            for url in fixed {
                if !endpoints.iter().any(|e| &e.url == url) {
                    endpoints.push(ServiceEndpoint {
                        url: url.clone(),
                        weight: 1,
                    });
                }
            }
        }
        Ok(endpoints)
    }

    /// Caches a freshly read list; returns the URLs no cached service lists any more.
    fn store_list(&self, service: &str, endpoints: Arc<Vec<ServiceEndpoint>>) -> Vec<String> {
        let mut services = lock(&self.services);
        let old = match services.get_mut(service) {
            Some(s) => {
                s.read_at = Instant::now();
                s.refreshing_since = None;
                std::mem::replace(&mut s.endpoints, endpoints.clone())
            }
            None => {
                if services.len() >= MAX_SERVICES {
                    services.clear();
                }
                let policy = self.policy(service);
                services.insert(
                    service.to_string(),
                    Service {
                        read_at: Instant::now(),
                        refreshing_since: None,
                        endpoints: endpoints.clone(),
                        balancer: Balancer::new(policy),
                    },
                );
                return Vec::new();
            }
        };
        let gone: Vec<&ServiceEndpoint> = old.iter().filter(|e| !endpoints.contains(e)).collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let listed: HashSet<&str> = services
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.url.as_str()))
            .collect();
        gone.into_iter()
            .filter(|e| !listed.contains(e.url.as_str()))
            .map(|e| e.url.clone())
            .collect()
    }

    /// Drops the channels (and so the connections) of endpoints that left. Calls in flight to
    /// them keep their channel until they finish.
    fn forget(&self, urls: Vec<String>) {
        if urls.is_empty() {
            return;
        }
        let mut conns = lock(&self.conns);
        for url in urls {
            conns.remove(&url);
        }
    }

    /// Whether `service` has at least one endpoint now.
    pub async fn knows(&self, service: &str) -> Result<bool, ResolveError> {
        Ok(!self.endpoints(service).await?.is_empty())
    }

    /// The endpoint and channel for the next call to `target`. A direct endpoint is used as
    /// given; a service's endpoint is chosen by its policy among the endpoints not ejected (or
    /// among all of them when every one is ejected).
    pub async fn pick(&self, target: &Target, key: &PickKey<'_>) -> Result<Picked, ResolveError> {
        let service = match target {
            Target::Endpoint(url) => {
                let conn = self.conn(url)?;
                return Ok(Picked::new(url.clone(), conn, self.config.health));
            }
            Target::Service(service) => service,
        };
        let endpoints = self.endpoints(service).await?;
        if endpoints.is_empty() {
            return Err(ResolveError::NoEndpoint(service.clone()));
        }
        let conns: Vec<Result<Arc<Conn>, ResolveError>> =
            endpoints.iter().map(|e| self.conn(&e.url)).collect();
        let now = Instant::now();
        let candidates: Vec<Candidate<'_>> = endpoints
            .iter()
            .zip(&conns)
            .map(|(e, conn)| Candidate {
                url: &e.url,
                weight: e.weight,
                in_flight: conn
                    .as_ref()
                    .map_or(0, |c| c.in_flight.load(Ordering::Relaxed)),
                healthy: conn
                    .as_ref()
                    .is_ok_and(|c| !lock(&c.health).is_ejected(now)),
            })
            .collect();
        let chosen = {
            let mut services = lock(&self.services);
            match services.get_mut(service) {
                Some(s) => s.balancer.pick(&candidates, key),
                // Evicted meanwhile (cache overflow): any endpoint will do for this one call.
                None => Some(0),
            }
        };
        let i = chosen.ok_or_else(|| ResolveError::NoEndpoint(service.clone()))?;
        let conn = conns
            .into_iter()
            .nth(i)
            .ok_or_else(|| ResolveError::NoEndpoint(service.clone()))??;
        Ok(Picked::new(
            endpoints[i].url.clone(),
            conn,
            self.config.health,
        ))
    }

    /// The balancing policy of `service` on this coordinator (configured, or the default).
    pub fn policy(&self, service: &str) -> Policy {
        self.config
            .policies
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The statically configured endpoints (`--endpoint service=URL`), by service.
    pub fn static_endpoints(&self) -> &HashMap<String, Vec<String>> {
        &self.config.static_endpoints
    }

    /// Copies every known endpoint's calls in flight and ejection, for display. The copy is
    /// bounded like the channel cache (`MAX_CHANNELS`); ejection instants become wall-clock
    /// times so they can be shown and sent.
    pub fn snapshot(&self) -> Snapshot {
        let conns: Vec<(String, Arc<Conn>)> = lock(&self.conns)
            .iter()
            .map(|(url, conn)| (url.clone(), conn.clone()))
            .collect();
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let endpoints = conns
            .into_iter()
            .map(|(url, conn)| {
                let ejected_until = lock(&conn.health)
                    .ejected_until(now)
                    .map(|until| wall + until.duration_since(now));
                let outstanding = conn.in_flight.load(Ordering::Relaxed);
                let state = EndpointState {
                    outstanding: u32::try_from(outstanding).unwrap_or(u32::MAX),
                    ejected_until,
                };
                (url, state)
            })
            .collect();
        Snapshot { endpoints }
    }

    /// The channel to `endpoint`, created on first use and reused after (tonic multiplexes calls
    /// over it and reconnects when the connection breaks).
    pub fn channel(&self, endpoint: &str) -> Result<ParticipantChannel, ResolveError> {
        Ok(self.conn(endpoint)?.channel())
    }

    /// The TLS files' generation a new channel to an endpoint of this kind is made with (0 for
    /// plain text); `None` when TLS is not set up.
    fn tls_generation(&self, tls: bool, http: bool) -> Option<u64> {
        match (tls, http) {
            (false, _) => Some(0),
            (true, true) => self.http_tls.get().map(|t| t.generation() + 1),
            (true, false) => self.tls.get().map(|t| t.generation() + 1),
        }
    }

    fn conn(&self, endpoint: &str) -> Result<Arc<Conn>, ResolveError> {
        // Every call asks: the endpoint is parsed only for a new channel.
        if let Some(conn) = lock(&self.conns).get(endpoint) {
            if self.tls_generation(conn.tls, conn.http) == Some(conn.tls_generation) {
                return Ok(conn.clone());
            }
        }
        let bad = || ResolveError::BadEndpoint(endpoint.to_string());
        let parsed = crate::model::parse_endpoint(endpoint).map_err(|_| bad())?;
        let no_tls = || ResolveError::NoTls(endpoint.to_string());
        let (tls, http_tls) = match parsed.tls {
            true => (
                Some(self.tls.get().ok_or_else(no_tls)?),
                Some(self.http_tls.get().ok_or_else(no_tls)?),
            ),
            false => (None, None),
        };
        let tls_generation = self
            .tls_generation(parsed.tls, parsed.is_http())
            .ok_or_else(no_tls)?;
        let mut conns = lock(&self.conns);
        if let Some(conn) = conns.get(endpoint) {
            // After the TLS files changed, new calls get a new channel with the new files;
            // calls in flight keep the old one until they finish.
            if conn.tls_generation == tls_generation {
                return Ok(conn.clone());
            }
        }
        // Lazy: no connection until the first call, and a new one after a connection breaks.
        let door = match (&parsed.http_base, tls) {
            (Some(base), _) => {
                let scheme = if parsed.tls { "https" } else { "http" };
                let origin = format!("{scheme}://{}:{}", parsed.host, parsed.port);
                Door::Http(HttpParticipant::new(
                    origin,
                    base.clone(),
                    http_tls.map(|t| t.current()),
                    self.config.connect_timeout,
                ))
            }
            // Plain text: h2 directly, without tonic's buffer task, unless BATON_GRPC_CHANNEL
            // says tonic (src/transport.rs).
            (None, None) => {
                let uri: ::http::Uri = endpoint.parse().map_err(|_| bad())?;
                let channel =
                    || GrpcChannel::plaintext(&uri, self.config.connect_timeout).ok_or_else(bad);
                Door::Grpc(
                    (0..channels_per_endpoint())
                        .map(|_| channel())
                        .collect::<Result<_, _>>()?,
                )
            }
            (None, Some(tls)) => {
                let builder = Endpoint::from_shared(endpoint.to_string())
                    .map_err(|_| bad())?
                    .connect_timeout(self.config.connect_timeout)
                    .tcp_nodelay(true);
                let builder = with_keepalive(builder)
                    .tls_config(ClientTlsConfig::clone(&tls.current()))
                    .map_err(|_| bad())?;
                Door::Grpc(
                    (0..channels_per_endpoint())
                        .map(|_| GrpcChannel::Tonic(builder.connect_lazy()))
                        .collect(),
                )
            }
        };
        if conns.len() >= MAX_CHANNELS {
            conns.clear();
        }
        let conn = Arc::new(Conn {
            door,
            next: AtomicUsize::new(0),
            tls_generation,
            tls: parsed.tls,
            http: parsed.is_http(),
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
        });
        conns.insert(endpoint.to_string(), conn.clone());
        Ok(conn)
    }
}

/// What one coordinator's registry knows about an endpoint right now, for display: the
/// balancing state is per coordinator (each counts its own calls and ejects on its own failures),
/// so another coordinator may see the same endpoint differently.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointState {
    /// Calls in flight from this coordinator to the endpoint.
    pub outstanding: u32,
    /// Until when the endpoint is passed over; `None` when it is not ejected.
    pub ejected_until: Option<std::time::SystemTime>,
}

/// A read-only copy of the registry's live balancing state (see [`Registry::snapshot`]).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    endpoints: HashMap<String, EndpointState>,
}

impl Snapshot {
    /// The state of `url`; an endpoint this coordinator has never called has no calls in flight
    /// and is not ejected.
    pub fn endpoint(&self, url: &str) -> EndpointState {
        self.endpoints.get(url).cloned().unwrap_or_default()
    }
}

/// Whether `text` is an endpoint URL a step may name directly (gRPC or HTTP/JSON): the same
/// strict parser as steps and registrations.
pub fn valid_endpoint(text: &str) -> bool {
    crate::model::parse_endpoint(text).is_ok()
}

#[cfg(test)]
mod tests;
