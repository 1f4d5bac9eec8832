//! Sites connected right now: one live session per site, in memory.
//!
//! A site that connects again replaces its older session (which is closed), so a
//! restarted agent is never shut out by the ghost of its previous connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use continuum_shared::link::Link;
use continuum_shared::protocol::CloseCode;

/// One connected site.
struct Session {
    id: u64,
    link: Link,
    view: LiveView,
    desired: tokio::sync::watch::Sender<u64>,
}

/// What is known about a connected site's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveView {
    /// When this session began, Unix seconds.
    pub connected_at: i64,
    /// Where it comes from.
    pub address: SocketAddr,
    /// Which transport carries it.
    pub transport: &'static str,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// The last heartbeat, Unix seconds.
    pub last_heartbeat: i64,
    /// Heartbeats received in this session.
    pub heartbeats: u64,
}

/// The registry of live sessions.
#[derive(Default)]
pub struct Fleet {
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `site`'s new session and returns its id, and the channel on which the
    /// session hears of new desired-state generations; an older session of the same site
    /// is closed.
    pub fn attach(
        &self,
        site: &str,
        link: Link,
        view: LiveView,
        generation: u64,
    ) -> (u64, tokio::sync::watch::Receiver<u64>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (desired, notices) = tokio::sync::watch::channel(generation);
        let session = Session {
            id,
            link,
            view,
            desired,
        };
        let old = self.lock().insert(site.to_owned(), session);
        if let Some(old) = old {
            old.link.close(
                CloseCode::Replaced,
                "a newer connection of this site took over",
            );
        }
        (id, notices)
    }

    /// Tells `site`'s session, if connected, that its desired state is now at
    /// `generation`.
    pub fn notify(&self, site: &str, generation: u64) {
        if let Some(session) = self.lock().get(site) {
            session.desired.send_replace(generation);
        }
    }

    /// `site`'s link and the protocol version its session speaks, when connected (for
    /// streams the control plane opens, such as logs).
    pub fn link(&self, site: &str) -> Option<(Link, u16)> {
        self.lock()
            .get(site)
            .map(|s| (s.link.clone(), s.view.protocol_version))
    }

    /// Removes a session when it ends, unless a newer one already replaced it.
    pub fn detach(&self, site: &str, id: u64) -> Option<LiveView> {
        let mut sessions = self.lock();
        if sessions.get(site).is_some_and(|s| s.id == id) {
            sessions.remove(site).map(|s| s.view)
        } else {
            None
        }
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, site: &str, id: u64, now: i64) {
        if let Some(session) = self.lock().get_mut(site).filter(|s| s.id == id) {
            session.view.last_heartbeat = now;
            session.view.heartbeats += 1;
        }
    }

    /// The live session of `site`, if connected.
    pub fn live(&self, site: &str) -> Option<LiveView> {
        self.lock().get(site).map(|s| s.view.clone())
    }

    /// Every live session.
    pub fn snapshot(&self) -> HashMap<String, LiveView> {
        self.lock()
            .iter()
            .map(|(k, s)| (k.clone(), s.view.clone()))
            .collect()
    }

    /// How many sites are connected.
    pub fn online(&self) -> usize {
        self.lock().len()
    }

    /// Closes `site`'s session, if any, telling the agent why.
    pub fn disconnect(&self, site: &str, code: CloseCode, reason: &str) -> bool {
        match self.lock().remove(site) {
            Some(session) => {
                session.link.close(code, reason);
                true
            }
            None => false,
        }
    }

    /// Closes every session (at shutdown).
    pub fn disconnect_all(&self, code: CloseCode, reason: &str) -> Vec<(String, LiveView)> {
        self.lock()
            .drain()
            .map(|(site, session)| {
                session.link.close(code, reason);
                (site, session.view)
            })
            .collect()
    }
}
