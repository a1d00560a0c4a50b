//! Registering a running participant with a coordinator's registry and keeping it alive.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::server::{ServeError, ServerHandle};
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{
    DeregisterParticipantRequest, HeartbeatParticipantRequest, RegisterParticipantRequest,
};
use crate::tls::ClientTls;

/// How a participant announces itself to a coordinator. See [`ServerHandle::register`].
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    coordinator: String,
    service: String,
    endpoint: Option<String>,
    weight: u32,
    zone: String,
    ttl: Duration,
    token: Option<String>,
    tls: Option<ClientTls>,
}

// By hand, so the token never reaches a debug print.
impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("coordinator", &self.coordinator)
            .field("service", &self.service)
            .field("endpoint", &self.endpoint)
            .field("weight", &self.weight)
            .field("zone", &self.zone)
            .field("ttl", &self.ttl)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl Registration {
    /// Register as an endpoint of `service` with the coordinator at `coordinator`
    /// (such as `http://127.0.0.1:7600`). The registration expires after 10s without heartbeats.
    pub fn new(coordinator: impl Into<String>, service: impl Into<String>) -> Self {
        Registration {
            coordinator: coordinator.into(),
            service: service.into(),
            endpoint: None,
            weight: 1,
            zone: String::new(),
            ttl: Duration::from_secs(10),
            token: None,
            tls: None,
        }
    }

    /// Present `token` (one with the `participant` role) as `authorization: Bearer <token>` on
    /// the registration, heartbeats and deregistration.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Reach an `https://` coordinator with this TLS: its certificate must chain to `tls.ca`,
    /// and `tls.identity` is presented if it requires client certificates. The files are read
    /// when registering.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Advertise this URL instead of the listening address (behind NAT or a proxy).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The endpoint's share of traffic under weighted load balancing.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The endpoint's zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// How long the registration lives without a heartbeat; heartbeats go every third of it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

impl ServerHandle {
    /// Register this server with a coordinator, then renew the registration in a background task
    /// until [`shutdown`](ServerHandle::shutdown), which deregisters it.
    pub async fn register(&self, registration: Registration) -> Result<(), ServeError> {
        let endpoint = registration
            .endpoint
            .clone()
            .unwrap_or_else(|| self.endpoint());
        let connect_error = |source| ServeError::Connect {
            addr: registration.coordinator.clone(),
            source,
        };
        let mut coordinator =
            Endpoint::from_shared(registration.coordinator.clone()).map_err(connect_error)?;
        if let Some(tls) = &registration.tls {
            coordinator = coordinator
                .tls_config(tls.load().await?)
                .map_err(connect_error)?;
        }
        let channel = coordinator
            .connect()
            .await
            .map_err(|source| ServeError::Connect {
                addr: registration.coordinator.clone(),
                source,
            })?;
        let bearer = match &registration.token {
            None => None,
            Some(token) => Some(bearer(token).ok_or_else(|| {
                ServeError::Register(Status::invalid_argument(
                    "token: must be 1 to 1000 visible ASCII characters without spaces",
                ))
            })?),
        };
        let mut client =
            CoordinatorClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
                if let Some(value) = &bearer {
                    request
                        .metadata_mut()
                        .insert("authorization", value.clone());
                }
                Ok(request)
            });
        let ttl_ms = registration.ttl.as_millis().try_into().unwrap_or(u64::MAX);
        let register = RegisterParticipantRequest {
            service: registration.service.clone(),
            endpoint: endpoint.clone(),
            weight: registration.weight,
            zone: registration.zone.clone(),
            ttl_ms,
        };
        client.register_participant(register.clone()).await?;
        let stop = self.registration_stop.clone();
        let period = (registration.ttl / 3).max(Duration::from_millis(100));
        let service = registration.service;
        self.registrations.spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.tick().await;
            loop {
                // With a TTL of 0 the registration never expires: no heartbeats, but it still
                // deregisters on shutdown.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick(), if ttl_ms > 0 => {}
                }
                let beat = HeartbeatParticipantRequest {
                    service: service.clone(),
                    endpoint: endpoint.clone(),
                    ttl_ms,
                };
                match client.heartbeat_participant(beat).await {
                    Ok(_) => {}
                    // The registration expired (say, the coordinator was down longer than the
                    // TTL): register again rather than silently dropping out of the registry.
                    Err(status) if status.code() == Code::NotFound => {
                        if let Err(error) = client.register_participant(register.clone()).await {
                            tracing::warn!(%service, %endpoint, %error, "participant re-registration failed");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%service, %endpoint, %error, "participant heartbeat failed");
                    }
                }
            }
            let leave = DeregisterParticipantRequest {
                service: service.clone(),
                endpoint: endpoint.clone(),
            };
            if let Err(error) = client.deregister_participant(leave).await {
                tracing::warn!(%service, %endpoint, %error, "participant deregistration failed");
            }
        });
        Ok(())
    }
}

/// The `authorization` value for `token`, marked sensitive; `None` if it cannot be sent.
fn bearer(token: &str) -> Option<MetadataValue<Ascii>> {
    if token.is_empty() || token.len() > 1000 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().ok()?;
    value.set_sensitive(true);
    Some(value)
}
