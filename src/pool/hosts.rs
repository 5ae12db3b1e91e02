//! Server hosts and their health. A database's `host` may list several hosts (`"a,b"`, same
//! port); new connections go round robin to the hosts that answer (`load_balance_hosts =
//! "round-robin"`), or to the first of them in the listed order (`"disable"`). A host whose connection
//! attempt failed (refused, timed out, dropped, or answered "starting up" / "too many
//! connections") is marked down for `server_login_retry` and skipped meanwhile, so a dead host
//! costs one failed attempt per cool-down, not one per connection. Health is shared by every
//! pool of the instance that uses the same host and port.

use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Health of every (host, port) the instance connects to.
#[derive(Default)]
pub struct HostRegistry {
    map: DashMap<(String, u16), Arc<HostState>>,
}

impl HostRegistry {
    fn get(&self, host: &str, port: u16) -> Arc<HostState> {
        self.map
            .entry((host.to_owned(), port))
            .or_insert_with(|| {
                Arc::new(HostState {
                    name: host.to_owned(),
                    port,
                    down: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// One server host.
pub struct HostState {
    pub name: String,
    pub port: u16,
    /// Until when it is skipped, and why.
    down: Mutex<Option<(Instant, String)>>,
}

impl HostState {
    /// True unless marked down and still cooling off.
    pub fn is_up(&self, now: Instant) -> bool {
        self.down
            .lock()
            .as_ref()
            .is_none_or(|(until, _)| *until <= now)
    }

    fn down_until(&self) -> Option<Instant> {
        self.down.lock().as_ref().map(|(until, _)| *until)
    }

    /// The error that took it down, if it is down now.
    pub fn down_reason(&self, now: Instant) -> Option<String> {
        match &*self.down.lock() {
            Some((until, why)) if *until > now => Some(why.clone()),
            _ => None,
        }
    }

    pub fn mark_down(&self, cool_down: Duration, why: String) {
        let mut d = self.down.lock();
        if d.is_none() {
            tracing::warn!(
                host = %self.name,
                port = self.port,
                error = %why,
                "server host not available; skipping it for {cool_down:?}"
            );
        }
        *d = Some((Instant::now() + cool_down, why));
    }

    pub fn mark_up(&self) {
        if self.down.lock().take().is_some() {
            tracing::info!(host = %self.name, port = self.port, "server host answers again");
        }
    }
}

/// The hosts of one pool's database, with its round-robin cursor.
pub struct HostSet {
    hosts: Vec<Arc<HostState>>,
    next: AtomicUsize,
    /// False with `load_balance_hosts = "disable"`: always the listed order.
    round_robin: bool,
}

impl HostSet {
    /// The hosts of a server target, balanced per its `load_balance_hosts`.
    pub fn for_target(registry: &HostRegistry, t: &crate::server::ServerTarget) -> HostSet {
        let mut set = HostSet::new(registry, &t.host, t.port);
        set.round_robin = t.load_balance == crate::config::LoadBalanceHosts::RoundRobin;
        set
    }

    /// Parses `spec` (`"a"` or `"a,b"`); an empty list means `127.0.0.1`.
    pub fn new(registry: &HostRegistry, spec: &str, port: u16) -> HostSet {
        let mut hosts: Vec<Arc<HostState>> = spec
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| registry.get(h, port))
            .collect();
        if hosts.is_empty() {
            hosts.push(registry.get("127.0.0.1", port));
        }
        HostSet {
            hosts,
            next: AtomicUsize::new(0),
            round_robin: true,
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Hosts to try for one new connection: those up, round robin (or in the listed order
    /// when load balancing is disabled); with `include_down`, then
    /// those down, the one back soonest first.
    pub fn order(&self, include_down: bool) -> Vec<Arc<HostState>> {
        let n = self.hosts.len();
        let start = if n > 1 && self.round_robin {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        let now = Instant::now();
        let rotated = self.hosts.iter().cycle().skip(start).take(n);
        let (mut up, mut down): (Vec<_>, Vec<_>) = rotated.cloned().partition(|h| h.is_up(now));
        if include_down {
            down.sort_by_key(|h| h.down_until());
            up.extend(down);
        }
        up
    }

    /// When the first host that is down now comes back (None if one is up).
    pub fn next_up_at(&self) -> Option<Instant> {
        let now = Instant::now();
        if self.hosts.iter().any(|h| h.is_up(now)) {
            return None;
        }
        self.hosts.iter().filter_map(|h| h.down_until()).min()
    }

    /// Why the hosts are down (the reason of the one back soonest).
    pub fn down_reason(&self) -> Option<String> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .hosts
            .iter()
            .filter_map(|h| Some((h.down_until()?, h.down_reason(now)?)))
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v.into_iter().next().map(|(_, why)| why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_hosts_are_skipped_then_tried_last() {
        let reg = HostRegistry::default();
        let set = HostSet::new(&reg, "a, b", 5432);
        assert_eq!(set.len(), 2);
        let first: Vec<String> = set.order(false).iter().map(|h| h.name.clone()).collect();
        assert_eq!(first, ["a", "b"]);
        let second: Vec<String> = set.order(false).iter().map(|h| h.name.clone()).collect();
        assert_eq!(second, ["b", "a"], "round robin");
        reg.get("a", 5432)
            .mark_down(Duration::from_secs(60), "refused".into());
        for _ in 0..3 {
            let names: Vec<String> = set.order(false).iter().map(|h| h.name.clone()).collect();
            assert_eq!(names, ["b"]);
        }
        let all: Vec<String> = set.order(true).iter().map(|h| h.name.clone()).collect();
        assert_eq!(all.last().map(String::as_str), Some("a"));
        assert!(set.next_up_at().is_none());
        reg.get("b", 5432)
            .mark_down(Duration::from_secs(30), "refused".into());
        assert!(set.next_up_at().is_some());
        assert_eq!(set.down_reason().as_deref(), Some("refused"));
        let other_port = HostSet::new(&reg, "a", 5433);
        assert_eq!(
            other_port.order(false).len(),
            1,
            "health is per host and port"
        );
        reg.get("b", 5432).mark_up();
        assert!(set.next_up_at().is_none());
    }

    #[test]
    fn disabled_load_balancing_keeps_the_listed_order() {
        let reg = HostRegistry::default();
        let mut set = HostSet::new(&reg, "a,b,c", 5432);
        set.round_robin = false;
        for _ in 0..4 {
            let names: Vec<String> = set.order(false).iter().map(|h| h.name.clone()).collect();
            assert_eq!(names, ["a", "b", "c"]);
        }
        reg.get("a", 5432)
            .mark_down(Duration::from_secs(60), "refused".into());
        let names: Vec<String> = set.order(true).iter().map(|h| h.name.clone()).collect();
        assert_eq!(names, ["b", "c", "a"], "a down host is tried last");
    }
}
