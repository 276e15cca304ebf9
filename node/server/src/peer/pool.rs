//! [`PeerPool`]: one cached connection per peer address, reconnected lazily.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{PeerConnection, PeerEndpoint, PeerError, PeerIdentity};
use crate::certs::IdentityError;

/// Caches one [`PeerConnection`] per peer address and reconnects lazily: a request that finds no
/// open connection dials one. Connection attempts to one address are serialised, and callers that
/// waited behind a failed attempt get its error instead of repeating it at once (no stampede on a
/// dead peer). Entries are per address and live until [`remove`](Self::remove); the set of peers
/// is bounded by cluster membership.
pub struct PeerPool {
    endpoint: PeerEndpoint,
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    connection: Option<PeerConnection>,
    /// When the last attempt failed, and how.
    failure: Option<(Instant, PeerError)>,
}

impl PeerPool {
    /// A pool dialling from `endpoint`.
    pub fn new(endpoint: PeerEndpoint) -> PeerPool {
        PeerPool { endpoint, slots: Mutex::new(HashMap::new()) }
    }

    /// The endpoint the pool dials from.
    pub fn endpoint(&self) -> &PeerEndpoint {
        &self.endpoint
    }

    /// The open connection to `addr`, dialling one if there is none. With `expected_name`, the
    /// peer (cached or new) must be the node of that name.
    pub async fn get(&self, addr: SocketAddr, expected_name: Option<&str>) -> Result<PeerConnection, PeerError> {
        let asked = Instant::now();
        let slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner).entry(addr).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.connection.as_ref().filter(|c| c.is_open()) {
            if let Some(expected) = expected_name {
                if connection.peer().name != expected {
                    let source = IdentityError::UnexpectedName {
                        expected: expected.to_string(),
                        found: connection.peer().name.clone(),
                    };
                    return Err(PeerError::Identity { addr, source });
                }
            }
            return Ok(connection.clone());
        }
        slot.connection = None;
        if let Some((at, error)) = &slot.failure {
            if *at >= asked {
                return Err(error.clone());
            }
        }
        match self.endpoint.connect(addr, expected_name).await {
            Ok(connection) => {
                slot.connection = Some(connection.clone());
                slot.failure = None;
                Ok(connection)
            }
            Err(error) => {
                slot.failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Sends `request` to the peer at `addr` over the cached connection (dialling if needed), all
    /// within `timeout`. A connection-level failure drops the cached connection, so the next call
    /// dials again.
    pub async fn request(
        &self,
        addr: SocketAddr,
        expected_name: Option<&str>,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        self.request_identified(addr, expected_name, request, timeout).await.map(|(_, reply)| reply)
    }

    /// [`request`](Self::request), also returning the verified identity of the peer that answered
    /// (for replies whose claims are checked against it, such as a gossiped membership).
    pub async fn request_identified(
        &self,
        addr: SocketAddr,
        expected_name: Option<&str>,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Arc<PeerIdentity>, Vec<u8>), PeerError> {
        let answer = self.request_versioned(addr, expected_name, |_| request, timeout).await?;
        Ok((answer.0, answer.2))
    }

    /// [`request_identified`](Self::request_identified) for a request that depends on the
    /// protocol version: `build` gets the version of the very connection the request is then sent
    /// on (a connection dialled again may have negotiated another), so a message of a newer
    /// version never reaches a node that did not agree to it. Also returns that version.
    pub async fn request_versioned(
        &self,
        addr: SocketAddr,
        expected_name: Option<&str>,
        build: impl FnOnce(u8) -> Vec<u8>,
        timeout: Duration,
    ) -> Result<(Arc<PeerIdentity>, u8, Vec<u8>), PeerError> {
        let built = |version: u8, _: &PeerIdentity| Ok::<_, std::convert::Infallible>(build(version));
        match self.request_built(addr, expected_name, built, timeout).await? {
            Ok(answer) => Ok(answer),
            Err(never) => match never {},
        }
    }

    /// [`request_versioned`](Self::request_versioned) whose `build` also sees the certified peer
    /// the connection reached, and may decline to send (its error is returned inside `Ok`).
    pub async fn request_built<E>(
        &self,
        addr: SocketAddr,
        expected_name: Option<&str>,
        build: impl FnOnce(u8, &PeerIdentity) -> Result<Vec<u8>, E>,
        timeout: Duration,
    ) -> Result<Result<(Arc<PeerIdentity>, u8, Vec<u8>), E>, PeerError> {
        let deadline = Instant::now() + timeout;
        let connection = tokio::time::timeout_at(deadline, self.get(addr, expected_name))
            .await
            .map_err(|_| PeerError::Timeout { after: timeout })??;
        let version = connection.version();
        let request = match build(version, &connection.peer_arc()) {
            Ok(request) => request,
            Err(declined) => return Ok(Err(declined)),
        };
        let result = connection.request(request, deadline.saturating_duration_since(Instant::now())).await;
        if let Err(error) = &result {
            // A timeout drops the cached connection too: a peer that restarted on the same address
            // silently discards packets of its old connection (it cannot even reset them), so the
            // only way back to it is a fresh handshake. Requests still running on the old
            // connection are not affected; the next one dials.
            if error.is_connection_level() || !connection.is_open() || matches!(error, PeerError::Timeout { .. }) {
                self.forget(addr, &connection).await;
            }
        }
        result.map(|reply| Ok((connection.peer_arc(), version, reply)))
    }

    /// Drops `failed` if it is still the cached connection to `addr`.
    async fn forget(&self, addr: SocketAddr, failed: &PeerConnection) {
        let slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(&addr).cloned();
        if let Some(slot) = slot {
            let mut slot = slot.lock().await;
            if slot.connection.as_ref().is_some_and(|c| c.stable_id() == failed.stable_id()) {
                slot.connection = None;
            }
        }
    }

    /// Forgets `addr`, closing its cached connection if there is one (a peer that left).
    pub async fn remove(&self, addr: SocketAddr) {
        let slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner).remove(&addr);
        if let Some(slot) = slot {
            if let Some(connection) = slot.lock().await.connection.take() {
                connection.close();
            }
        }
    }

    /// How many peer addresses the pool knows.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether the pool knows no peer address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
