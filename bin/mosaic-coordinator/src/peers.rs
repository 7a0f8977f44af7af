//! The coordinators sharing a store say every second that they are alive (`Store::beat_peer`),
//! so `/health` and `/metrics` on any of them show how many are up and which one leads.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use mosaic_http::{ComponentHealth, HealthProbe};
use mosaic_store::{Peer, PeerBeat, Store};
use tokio_util::sync::CancellationToken;

use crate::probes::Leadership;

/// How often each coordinator says it is alive.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A coordinator whose last beat is older than this is not counted alive.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(5);

/// This process as its peers see it.
#[derive(Debug, Clone)]
pub struct ThisPeer {
    /// New at every start: a restarted coordinator is a new peer.
    pub id: String,
    /// Host name and listening port.
    pub name: String,
    /// Agent sessions it runs at once (`engine.max_concurrent_agents`).
    pub capacity: u32,
}

impl ThisPeer {
    pub fn new(port: u16, capacity: u32) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|host| host.trim().to_owned())
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            name: format!("{host}:{port}"),
            capacity,
        }
    }

    /// This coordinator as the store records it.
    pub fn peer(&self, leading: bool) -> Peer {
        Peer {
            id: self.id.clone(),
            name: self.name.clone(),
            leading,
            capacity: self.capacity,
        }
    }
}

/// While this coordinator leads and sessions are shared, keeps the engine's global limit at
/// the capacity the live coordinators offer (checked every [`BEAT_EVERY`]): a coordinator
/// joining adds its agents, one that stops takes them away.
pub async fn follow_capacity(
    store: Arc<dyn Store>,
    engine: Arc<std::sync::OnceLock<mosaic_engine::engine::Engine>>,
    cancel: CancellationToken,
) {
    loop {
        if let Some(engine) = engine.get() {
            match store.peers_alive(ALIVE_WITHIN).await {
                Ok(alive) => {
                    let capacity = offered_capacity(&alive);
                    if capacity != engine.agent_capacity() {
                        tracing::info!(
                            capacity,
                            coordinators = alive.len(),
                            "agent capacity across the coordinators changed"
                        );
                    }
                    engine.set_agent_capacity(capacity);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the coordinators' capacity; keeping the last")
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(BEAT_EVERY) => {}
        }
    }
}

/// The sessions the live coordinators run at once, together.
pub fn offered_capacity(alive: &[PeerBeat]) -> u32 {
    alive
        .iter()
        .fold(0u32, |sum, beat| sum.saturating_add(beat.peer.capacity))
}

/// Beats every [`BEAT_EVERY`] until cancelled. A failed beat is only logged: the coordinator
/// works on, and its peers stop counting it until the store answers again.
pub async fn beat(
    store: Arc<dyn Store>,
    this: ThisPeer,
    leadership: Arc<Leadership>,
    cancel: CancellationToken,
) {
    loop {
        let peer = this.peer(leadership.leads());
        if let Err(err) = store.beat_peer(&peer).await {
            tracing::warn!(error = %err, "cannot tell the other coordinators this one is alive");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(BEAT_EVERY) => {}
        }
    }
}

/// The coordinators alive now, as `/health` says it: "2 alive: a:8000 (leader), b:8000; 4 agent
/// sessions at once" (the capacity they offer together).
pub fn describe(alive: &[PeerBeat]) -> String {
    let names: Vec<String> = alive
        .iter()
        .map(|beat| {
            if beat.peer.leading {
                format!("{} (leader)", beat.peer.name)
            } else {
                beat.peer.name.clone()
            }
        })
        .collect();
    if names.is_empty() {
        return "0 alive".to_owned();
    }
    format!(
        "{} alive: {}; {} agent sessions at once",
        alive.len(),
        names.join(", "),
        offered_capacity(alive)
    )
}

/// `peers` in `/health`: how many coordinators share the store and which one leads.
#[derive(Debug)]
pub struct PeersProbe {
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl HealthProbe for PeersProbe {
    fn name(&self) -> &str {
        "peers"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        match self.store.peers_alive(ALIVE_WITHIN).await {
            Ok(alive) => ComponentHealth::up().with_detail(describe(&alive)),
            Err(err) => ComponentHealth::down(format!("cannot read the coordinators alive: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn the_leader_is_named_among_the_peers_alive() {
        let peer = |name: &str, leading: bool| PeerBeat {
            peer: Peer {
                id: name.to_owned(),
                name: name.to_owned(),
                leading,
                capacity: 2,
            },
            at: Utc::now(),
        };
        assert_eq!(
            describe(&[peer("a:8000", false), peer("b:8000", true)]),
            "2 alive: a:8000, b:8000 (leader); 4 agent sessions at once"
        );
        assert_eq!(describe(&[]), "0 alive");
        assert_eq!(
            offered_capacity(&[peer("a:8000", false), peer("b:8000", true)]),
            4
        );
    }
}
