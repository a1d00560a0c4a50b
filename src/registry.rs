//! Participant services and their endpoints: which endpoint a call goes to, and the reused gRPC
//! channel to it.
//!
//! Endpoints come from the registry table (`RegisterParticipant`, with expiry) and from static
//! configuration. A service's endpoint list is cached for a short time so that a call does not
//! read the database, yet a newly registered endpoint receives traffic within that time. The
//! policy here is round robin; smarter policies (weighted, least outstanding, consistent hashing)
//! plug in at [`Registry::pick`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::model::Target;
use crate::store::{StoreError, TxLog};

/// Why no endpoint could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The service has no registered or configured endpoint (now).
    #[error("no endpoint is registered for participant service {0:?}")]
    NoEndpoint(String),
    /// The endpoint text is not a URL tonic can dial.
    #[error("endpoint {0:?} is not a valid http:// or https:// url")]
    BadEndpoint(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registry settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Endpoints configured statically, by service.
    pub static_endpoints: HashMap<String, Vec<String>>,
    /// How long a service's endpoint list is reused before it is read again.
    pub refresh: Duration,
    /// TCP connect timeout for participant channels.
    pub connect_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            static_endpoints: HashMap::new(),
            refresh: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(2000),
        }
    }
}

/// At most this many cached channels; past it the cache starts over.
const MAX_CHANNELS: usize = 4096;

struct Cached {
    read_at: Instant,
    endpoints: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

/// Resolves targets to endpoints and keeps one lazily connected channel per endpoint.
pub struct Registry {
    store: Arc<dyn TxLog>,
    config: RegistryConfig,
    services: Mutex<HashMap<String, Cached>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Registry {
    pub fn new(store: Arc<dyn TxLog>, config: RegistryConfig) -> Self {
        Registry {
            store,
            config,
            services: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoints of `service` now (registered and static), from the cache when fresh.
    pub async fn endpoints(&self, service: &str) -> Result<Arc<Vec<String>>, ResolveError> {
        if let Some(cached) = self.fresh(service) {
            return Ok(cached.0);
        }
        let mut endpoints: Vec<String> = self
            .store
            .list_participants(Some(service))
            .await?
            .into_iter()
            .map(|p| p.endpoint)
            .collect();
        if let Some(fixed) = self.config.static_endpoints.get(service) {
            for e in fixed {
                if !endpoints.contains(e) {
                    endpoints.push(e.clone());
                }
            }
        }
        let endpoints = Arc::new(endpoints);
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let next = services
            .get(service)
            .map(|c| c.next.clone())
            .unwrap_or_default();
        services.insert(
            service.to_string(),
            Cached {
                read_at: Instant::now(),
                endpoints: endpoints.clone(),
                next,
            },
        );
        Ok(endpoints)
    }

    fn fresh(&self, service: &str) -> Option<(Arc<Vec<String>>, Arc<AtomicUsize>)> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let cached = services.get(service)?;
        (cached.read_at.elapsed() < self.config.refresh)
            .then(|| (cached.endpoints.clone(), cached.next.clone()))
    }

    /// Whether `service` has at least one endpoint now.
    pub async fn knows(&self, service: &str) -> Result<bool, ResolveError> {
        Ok(!self.endpoints(service).await?.is_empty())
    }

    /// The endpoint the next call to `target` goes to.
    pub async fn pick(&self, target: &Target) -> Result<String, ResolveError> {
        match target {
            Target::Endpoint(url) => Ok(url.clone()),
            Target::Service(service) => {
                let endpoints = self.endpoints(service).await?;
                if endpoints.is_empty() {
                    return Err(ResolveError::NoEndpoint(service.clone()));
                }
                let next = self
                    .fresh(service)
                    .map(|(_, next)| next)
                    .unwrap_or_default();
                let i = next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                Ok(endpoints[i].clone())
            }
        }
    }

    /// The channel to `endpoint`, created on first use and reused after (tonic multiplexes calls
    /// over it and reconnects when the connection breaks).
    pub fn channel(&self, endpoint: &str) -> Result<Channel, ResolveError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|_| ResolveError::BadEndpoint(endpoint.to_string()))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        // Bounded: direct endpoints named in definitions could otherwise grow the map forever.
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Whether `text` is an endpoint URL a step may name directly.
pub fn valid_endpoint(text: &str) -> bool {
    (text.starts_with("http://") || text.starts_with("https://"))
        && Endpoint::from_shared(text.to_string()).is_ok()
}
