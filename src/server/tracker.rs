//! The books of one listener's connections: how many are open, from which addresses, which
//! have a request in flight and which have been idle longest. At a cap, the connection idle
//! longest (handshaking ones included) is closed to make room; a new connection is refused
//! only when every one at the cap is busy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::{Closed, ConnectionLimits};
use crate::metrics::Metrics;

/// The open connections of one listener.
pub(super) struct Tracker {
    pub(super) listener: &'static str,
    pub(super) limits: ConnectionLimits,
    pub(super) epoch: Instant,
    state: Mutex<State>,
    pub(super) metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Arc<Activity>>,
    per_source: HashMap<IpAddr, usize>,
}

/// What the tracker knows of one connection.
pub(super) struct Activity {
    pub(super) id: u64,
    pub(super) source: IpAddr,
    pub(super) epoch: Instant,
    /// Requests being answered.
    pub(super) in_flight: AtomicU64,
    /// Requests begun.
    pub(super) requests: AtomicU64,
    /// When a request last began or ended (or the connection was accepted), in milliseconds
    /// since `epoch`.
    pub(super) last: AtomicU64,
    pub(super) evicted: AtomicBool,
    pub(super) evict: Notify,
}

impl Activity {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.evicted.load(Ordering::SeqCst)
    }

    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.last.store(self.now(), Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the connection is to be closed for idling, if nothing happens before: `None`
    /// while a request is in flight (each has its own deadline).
    pub(super) fn idle_deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let allowed = if self.requests.load(Ordering::SeqCst) == 0 {
            limits.request_header_timeout
        } else {
            limits.idle_timeout
        };
        let last = Duration::from_millis(self.last.load(Ordering::SeqCst));
        Some(self.epoch + last + allowed)
    }

    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        // A stored permit: the connection's task sees it even if it is not waiting yet.
        self.evict.notify_one();
    }
}

/// A request in flight; ends when dropped.
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.last.store(activity.now(), Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An accepted connection's place in the tracker; gives it up when dropped.
pub(super) struct Ticket {
    pub(super) tracker: Arc<Tracker>,
    pub(super) activity: Arc<Activity>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tracker.forget(self.activity.id);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The idle connection that has been idle longest among `candidates`.
fn oldest_idle<'a>(candidates: impl Iterator<Item = &'a Arc<Activity>>) -> Option<Arc<Activity>> {
    candidates
        .filter(|a| a.is_idle())
        .min_by_key(|a| a.last.load(Ordering::SeqCst))
        .cloned()
}

impl Tracker {
    pub(super) fn new(
        listener: &'static str,
        limits: ConnectionLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Tracker {
            listener,
            limits,
            epoch: Instant::now(),
            state: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection from `source`, made by closing the oldest idle
    /// connection when a cap is reached; `None` when every connection at the cap is busy.
    pub(super) fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Ticket> {
        let mut state = self.lock();
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        let victim = if from_source >= self.limits.max_per_source {
            match oldest_idle(state.open.values().filter(|a| a.source == source)) {
                Some(victim) => Some(victim),
                None => return self.refuse(),
            }
        } else if state.open.len() >= self.limits.max_connections {
            match oldest_idle(state.open.values()) {
                Some(victim) => Some(victim),
                None => return self.refuse(),
            }
        } else {
            None
        };
        if let Some(victim) = victim {
            remove(&mut state, victim.id);
            victim.evict();
            self.metrics
                .connection_closed(self.listener, Closed::Evicted.as_str());
        }
        let id = state.next_id;
        state.next_id += 1;
        let activity = Arc::new(Activity {
            id,
            source,
            epoch: self.epoch,
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last: AtomicU64::new(millis(self.epoch.elapsed())),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        state.open.insert(id, activity.clone());
        *state.per_source.entry(source).or_insert(0) += 1;
        self.metrics.connections(self.listener, state.open.len());
        Some(Ticket {
            tracker: self.clone(),
            activity,
        })
    }

    fn refuse(&self) -> Option<Ticket> {
        self.metrics
            .connection_closed(self.listener, Closed::Refused.as_str());
        None
    }

    /// Closes the connection idle longest, to free its descriptor; false when none is idle.
    pub(super) fn evict_oldest_idle(&self) -> bool {
        let mut state = self.lock();
        let Some(victim) = oldest_idle(state.open.values()) else {
            return false;
        };
        remove(&mut state, victim.id);
        victim.evict();
        self.metrics
            .connection_closed(self.listener, Closed::Evicted.as_str());
        self.metrics.connections(self.listener, state.open.len());
        true
    }

    fn forget(&self, id: u64) {
        let mut state = self.lock();
        if remove(&mut state, id) {
            self.metrics.connections(self.listener, state.open.len());
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// Takes connection `id` out of the books; false when it was already out (evicted).
fn remove(state: &mut State, id: u64) -> bool {
    let Some(activity) = state.open.remove(&id) else {
        return false;
    };
    if let Some(n) = state.per_source.get_mut(&activity.source) {
        *n -= 1;
        if *n == 0 {
            state.per_source.remove(&activity.source);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(max: usize, per_source: usize) -> Arc<Tracker> {
        let limits = ConnectionLimits {
            max_connections: max,
            max_per_source: per_source,
            ..ConnectionLimits::webhook()
        };
        Tracker::new("webhook", limits, Arc::new(Metrics::new()))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let t = tracker(3, 3);
        let a = t.admit(ip(1)).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = t.admit(ip(2)).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let c = t.admit(ip(3)).unwrap();
        // `a` is the oldest but busy; `b` is the oldest idle one.
        let _busy = a.activity.begin();
        let d = t.admit(ip(4)).expect("room is made");
        assert!(b.activity.evicted.load(Ordering::SeqCst));
        assert!(!a.activity.evicted.load(Ordering::SeqCst));
        assert!(!c.activity.evicted.load(Ordering::SeqCst));
        assert_eq!(t.open(), 3);
        // The evicted connection's ticket going away later changes nothing.
        drop(b);
        assert_eq!(t.open(), 3);
        drop(d);
        assert_eq!(t.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_connection_is_busy_a_new_one_is_refused() {
        let t = tracker(2, 2);
        let a = t.admit(ip(1)).unwrap();
        let b = t.admit(ip(2)).unwrap();
        let (_x, _y) = (a.activity.begin(), b.activity.begin());
        assert!(t.admit(ip(3)).is_none());
        assert!(!t.evict_oldest_idle());
        assert_eq!(t.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn one_source_at_its_cap_gives_way_only_among_its_own_connections() {
        let t = tracker(10, 2);
        let other = t.admit(ip(9)).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let a = t.admit(ip(1)).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let _b = t.admit(ip(1)).unwrap();
        let _c = t
            .admit(ip(1))
            .expect("its own oldest idle connection makes room");
        assert!(a.activity.evicted.load(Ordering::SeqCst));
        assert!(
            !other.activity.evicted.load(Ordering::SeqCst),
            "an older connection of another source is not touched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_is_the_header_timeout_first_and_the_idle_timeout_after() {
        let t = tracker(4, 4);
        let a = t.admit(ip(1)).unwrap();
        let limits = &t.limits;
        let start = Instant::now();
        assert_eq!(
            a.activity.idle_deadline(limits),
            Some(start + limits.request_header_timeout)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = a.activity.begin();
        assert_eq!(a.activity.idle_deadline(limits), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(busy);
        assert_eq!(
            a.activity.idle_deadline(limits),
            Some(start + Duration::from_secs(3) + limits.idle_timeout)
        );
    }
}
