//! File descriptors, the one resource every attack on a webhook ends up spending: the process's
//! limit (raised to the hard limit at start, as Go's runtime does for every Go server), how it
//! is split between the webhook's connections, the admin port and registry sockets, and a
//! cheap count of the descriptors open now, so that new registry sockets are refused while
//! the server still has descriptors to accept the apiserver's requests with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Descriptors kept for what is neither a connection nor a registry socket: the listeners,
/// the runtime's epoll and wakers, standard streams, files read on reload, the Kubernetes
/// client's connection.
pub(crate) const RESERVED_FDS: u64 = 64;

/// Idle pooled registry connections, over every origin, that the descriptor ceiling leaves
/// room for. Pools are per origin and a hostile registry can be many origins, so past this
/// the pool is renewed (its idle connections closed) and new connections wait.
pub(crate) const IDLE_REGISTRY_CONNECTIONS: u64 = 512;

/// Raises the soft limit on open files to the hard limit and returns the soft limit in force
/// afterwards (`None` where there is no such limit). A limit that cannot be raised is kept.
pub(crate) fn raise_limit() -> Option<u64> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    limit()
}

/// The soft limit on open files, `None` where the platform has none.
pub(crate) fn limit() -> Option<u64> {
    if !rlimit::Resource::NOFILE.is_supported() {
        return None;
    }
    rlimit::Resource::NOFILE
        .get()
        .ok()
        .map(|(soft, _)| soft)
        .filter(|&soft| soft != rlimit::INFINITY)
}

/// How the descriptors are shared: each listener's connection cap and the registry sockets'
/// cap, each the configured value or less, so that together with [`RESERVED_FDS`] they stay
/// under the process's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdBudget {
    pub webhook_connections: usize,
    pub admin_connections: usize,
    pub outbound_connections: usize,
    /// Registry sockets are refused once this many descriptors are open (`None`: nothing can
    /// be counted). It leaves room for every webhook and admin connection, and bounds idle
    /// pooled registry connections to [`IDLE_REGISTRY_CONNECTIONS`].
    pub outbound_ceiling: Option<u64>,
}

impl FdBudget {
    /// The caps for a process whose open-files limit is `limit`: the configured ones when the
    /// limit is large enough; otherwise the webhook and the registry sockets get three eighths
    /// each of what is left after the reserve and the admin port, and the last quarter stays
    /// for idle pooled registry connections.
    pub(crate) fn split(limit: Option<u64>, webhook: usize, admin: usize, outbound: usize) -> Self {
        let Some(limit) = limit else {
            let all = (webhook + admin + outbound) as u64;
            return FdBudget {
                webhook_connections: webhook,
                admin_connections: admin,
                outbound_connections: outbound,
                outbound_ceiling: Some(RESERVED_FDS + all + IDLE_REGISTRY_CONNECTIONS),
            };
        };
        let usable = limit.saturating_sub(RESERVED_FDS);
        let admin = admin.min(to_usize(usable / 16)).max(1);
        let shared = usable.saturating_sub(admin as u64);
        let webhook = webhook.min(to_usize(shared * 3 / 8)).max(1);
        let outbound = outbound.min(to_usize(shared * 3 / 8)).max(1);
        let inbound = (webhook + admin) as u64;
        let room = limit.saturating_sub(RESERVED_FDS + inbound);
        let needed = RESERVED_FDS + inbound + outbound as u64 + IDLE_REGISTRY_CONNECTIONS;
        FdBudget {
            webhook_connections: webhook,
            admin_connections: admin,
            outbound_connections: outbound,
            outbound_ceiling: Some(room.min(needed)),
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The number of descriptors this process has open, `None` where it cannot be read (only
/// Linux's `/proc/self/fd` is read). Costs a directory listing: use [`OpenFds`] on hot paths.
pub(crate) fn open_now() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The listing's own descriptor is among the entries.
    Some((entries.count() as u64).saturating_sub(1))
}

/// [`open_now`], read at most once every few milliseconds however often it is asked.
#[derive(Debug)]
pub(crate) struct OpenFds {
    epoch: Instant,
    /// When the count was last read, in milliseconds since `epoch` (`u64::MAX`: never).
    read_at: AtomicU64,
    count: AtomicU64,
}

/// How old a count may be. Sockets are opened at most a few hundred at a time, and a count
/// this old is wrong by at most those, which the reserve covers.
const FRESH_MS: u64 = 20;

impl Default for OpenFds {
    fn default() -> Self {
        OpenFds {
            epoch: Instant::now(),
            read_at: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
        }
    }
}

impl OpenFds {
    /// The open descriptors, at most [`FRESH_MS`] old; `None` where they cannot be counted.
    pub(crate) fn get(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let read_at = self.read_at.load(Ordering::Relaxed);
        if read_at != u64::MAX && now.saturating_sub(read_at) < FRESH_MS {
            return Some(self.count.load(Ordering::Relaxed));
        }
        let count = open_now()?;
        self.count.store(count, Ordering::Relaxed);
        self.read_at.store(now, Ordering::Relaxed);
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_limit_keeps_the_configured_caps() {
        let budget = FdBudget::split(Some(1 << 20), 256, 32, 128);
        assert_eq!(
            (
                budget.webhook_connections,
                budget.admin_connections,
                budget.outbound_connections
            ),
            (256, 32, 128)
        );
        // Idle pooled connections are bounded even where descriptors are plenty.
        assert_eq!(budget.outbound_ceiling, Some(64 + 256 + 32 + 128 + 512));
    }

    #[test]
    fn a_small_limit_shrinks_the_caps_and_keeps_room_to_accept() {
        for limit in [128, 256, 1024, 4096] {
            let b = FdBudget::split(Some(limit), 100_000, 32, 100_000);
            let taken = RESERVED_FDS
                + (b.webhook_connections + b.admin_connections + b.outbound_connections) as u64;
            assert!(taken <= limit, "{limit}: {b:?}");
            let ceiling = b.outbound_ceiling.unwrap();
            // Registry sockets stop where every connection the listeners may accept still fits.
            assert!(
                ceiling + RESERVED_FDS + (b.webhook_connections + b.admin_connections) as u64
                    <= limit
            );
        }
        let b = FdBudget::split(Some(1024), 256, 32, 128);
        assert_eq!(
            (
                b.webhook_connections,
                b.admin_connections,
                b.outbound_connections
            ),
            (256, 32, 128)
        );
        let b = FdBudget::split(Some(512), 256, 32, 128);
        assert_eq!(
            (
                b.webhook_connections,
                b.admin_connections,
                b.outbound_connections
            ),
            (157, 28, 128)
        );
    }

    #[test]
    fn without_a_limit_the_ceiling_bounds_idle_connections() {
        let b = FdBudget::split(None, 10, 2, 3);
        assert_eq!(b.outbound_ceiling, Some(64 + 15 + 512));
        assert_eq!(b.webhook_connections, 10);
    }

    #[test]
    fn this_process_has_descriptors_to_count() {
        if cfg!(target_os = "linux") {
            let fds = OpenFds::default();
            let n = fds.get().expect("Linux has /proc/self/fd");
            // stdin, stdout, stderr at least.
            assert!(n >= 3, "{n}");
        }
    }
}
