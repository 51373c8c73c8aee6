//! Admission of pending handshakes on 15008 (TLS, then the HTTP/2 preface), per shard.
//!
//! A pending handshake holds its TLS buffers before the peer has proved anything, so
//! the shard bounds them, twice:
//! * per source (an IPv4 address, or an IPv6 /64, which one host usually holds whole):
//!   past `max_per_source`, the newcomer is refused. One host's idle sockets cannot
//!   take the places everybody shares.
//! * per shard: past `max_pending`, the OLDEST pending handshake is evicted (its task
//!   told to abort) and the newcomer admitted. Sockets parked by many sources age
//!   out as fast as new peers arrive, instead of locking every new peer out until the
//!   handshake timeout frees a place.
//!
//! Plain data driven by the shard's tasks: no I/O, no clock.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;

use crate::shard::signal::Flag;

/// The bounds of pending handshakes on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Pending handshakes on the shard; past it the oldest is evicted.
    pub max_pending: usize,
    /// Pending handshakes from one source; past it a newcomer is refused.
    pub max_per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_pending: 256,
            max_per_source: 16,
        }
    }
}

/// Who shares a per-source budget: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// The key of `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                SourceKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

struct Entry {
    source: SourceKey,
    evict: Rc<Flag>,
}

/// The pending handshakes of one shard, oldest first.
pub struct PendingHandshakes {
    limits: HandshakeLimits,
    next: u64,
    by_age: BTreeMap<u64, Entry>,
    by_source: HashMap<SourceKey, usize>,
}

/// The answer to a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Admitted as `id`; its task aborts when `evict` is raised. If the shard was
    /// full, the oldest handshake was evicted to make room (and told).
    Admitted {
        /// Its place, to release with [`PendingHandshakes::release`].
        id: u64,
        /// Raised if a newer handshake evicts this one.
        evict: Rc<Flag>,
    },
    /// Its source already has `max_per_source` handshakes pending.
    SourceFull,
}

impl PendingHandshakes {
    /// None pending yet.
    pub fn new(limits: HandshakeLimits) -> Self {
        Self {
            limits,
            next: 0,
            by_age: BTreeMap::new(),
            by_source: HashMap::new(),
        }
    }

    /// Admits a handshake from `source`, evicting the oldest if the shard is full.
    pub fn admit(&mut self, source: IpAddr) -> Admission {
        let source = SourceKey::of(source);
        let from_source = self.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_per_source {
            return Admission::SourceFull;
        }
        while self.by_age.len() >= self.limits.max_pending.max(1) {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.forget(oldest.source);
            oldest.evict.raise();
        }
        let id = self.next;
        self.next += 1;
        let evict = Rc::new(Flag::default());
        self.by_age.insert(
            id,
            Entry {
                source,
                evict: evict.clone(),
            },
        );
        *self.by_source.entry(source).or_insert(0) += 1;
        Admission::Admitted { id, evict }
    }

    /// Releases the place of handshake `id` (finished, failed, or evicted: then it
    /// was released already and this does nothing).
    pub fn release(&mut self, id: u64) {
        if let Some(e) = self.by_age.remove(&id) {
            self.forget(e.source);
        }
    }

    fn forget(&mut self, source: SourceKey) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }

    /// Handshakes pending now.
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    #[cfg(test)]
    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }

    #[cfg(test)]
    /// Sources with a handshake pending now.
    pub fn sources(&self) -> usize {
        self.by_source.len()
    }
}

/// A place among the pending handshakes, released when dropped (also when the task
/// holding it is cancelled).
pub struct Ticket<G: Fn(usize)> {
    pending: Rc<RefCell<PendingHandshakes>>,
    id: u64,
    evict: Rc<Flag>,
    on_change: G,
}

impl<G: Fn(usize)> Ticket<G> {
    /// Takes a place for `source` (evicting the oldest handshake if the shard is
    /// full), or `Err(SourceFull)`; `on_change` is told the number pending after every
    /// change (for a gauge).
    pub fn take(
        pending: &Rc<RefCell<PendingHandshakes>>,
        source: IpAddr,
        on_change: G,
    ) -> Result<Self, SourceFull> {
        let admitted = pending.borrow_mut().admit(source);
        match admitted {
            Admission::SourceFull => Err(SourceFull),
            Admission::Admitted { id, evict, .. } => {
                on_change(pending.borrow().len());
                Ok(Ticket {
                    pending: pending.clone(),
                    id,
                    evict,
                    on_change,
                })
            }
        }
    }

    /// Waits until a newer handshake evicts this one.
    pub async fn evicted(&self) {
        self.evict.raised().await
    }
}

impl<G: Fn(usize)> Drop for Ticket<G> {
    fn drop(&mut self) {
        let mut p = self.pending.borrow_mut();
        p.release(self.id);
        (self.on_change)(p.len());
    }
}

/// The source already has as many handshakes pending as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFull;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admitted(a: Admission) -> (u64, Rc<Flag>) {
        match a {
            Admission::Admitted { id, evict } => (id, evict),
            Admission::SourceFull => panic!("refused"),
        }
    }

    #[test]
    fn a_source_past_its_cap_is_refused_while_others_are_admitted() {
        let mut p = PendingHandshakes::new(HandshakeLimits {
            max_pending: 100,
            max_per_source: 2,
        });
        admitted(p.admit(ip("10.0.0.1")));
        let (second, _) = admitted(p.admit(ip("10.0.0.1")));
        assert!(matches!(p.admit(ip("10.0.0.1")), Admission::SourceFull));
        // The IPv4-mapped form is the same source.
        assert!(matches!(
            p.admit(ip("::ffff:10.0.0.1")),
            Admission::SourceFull
        ));
        admitted(p.admit(ip("10.0.0.2")));
        p.release(second);
        admitted(p.admit(ip("10.0.0.1")));
        assert_eq!((p.len(), p.sources()), (3, 2));
    }

    #[test]
    fn a_full_shard_evicts_the_oldest_pending_handshake() {
        let mut p = PendingHandshakes::new(HandshakeLimits {
            max_pending: 3,
            max_per_source: 3,
        });
        let flags: Vec<_> = (1..=3)
            .map(|i| admitted(p.admit(ip(&format!("10.0.0.{i}")))).1)
            .collect();
        let (_, newest) = admitted(p.admit(ip("10.0.0.9")));
        assert!(flags[0].is_raised(), "the oldest is evicted");
        assert!(!flags[1].is_raised() && !flags[2].is_raised() && !newest.is_raised());
        assert_eq!((p.len(), p.sources()), (3, 3));
        // The evicted one's release (its task ending) changes nothing.
        p.release(0);
        assert_eq!(p.len(), 3);
        admitted(p.admit(ip("10.0.0.9")));
        assert!(flags[1].is_raised());
    }

    #[test]
    fn released_places_are_reused_and_sources_forgotten() {
        let mut p = PendingHandshakes::new(HandshakeLimits::default());
        let ids: Vec<u64> = (0..16)
            .map(|_| admitted(p.admit(ip("10.0.0.1"))).0)
            .collect();
        assert!(matches!(p.admit(ip("10.0.0.1")), Admission::SourceFull));
        for id in ids {
            p.release(id);
        }
        assert!(p.is_empty());
        assert_eq!(p.sources(), 0);
        admitted(p.admit(ip("10.0.0.1")));
    }

    #[test]
    fn ipv6_sources_share_a_budget_per_64() {
        assert_eq!(
            SourceKey::of(ip("fd00:1:2:3::1")),
            SourceKey::of(ip("fd00:1:2:3:ffff::9"))
        );
        assert_ne!(
            SourceKey::of(ip("fd00:1:2:3::1")),
            SourceKey::of(ip("fd00:1:2:4::1"))
        );
        let mut p = PendingHandshakes::new(HandshakeLimits {
            max_pending: 10,
            max_per_source: 1,
        });
        admitted(p.admit(ip("fd00:1:2:3::1")));
        assert!(matches!(
            p.admit(ip("fd00:1:2:3::2")),
            Admission::SourceFull
        ));
    }

    #[test]
    fn a_ticket_releases_its_place_when_dropped() {
        let p = Rc::new(RefCell::new(PendingHandshakes::new(HandshakeLimits {
            max_pending: 1,
            max_per_source: 1,
        })));
        let seen = Rc::new(std::cell::Cell::new(usize::MAX));
        let gauge = |seen: &Rc<std::cell::Cell<usize>>| {
            let s = seen.clone();
            move |n| s.set(n)
        };
        let first = Ticket::take(&p, ip("10.0.0.1"), gauge(&seen)).unwrap();
        assert_eq!(seen.get(), 1);
        assert!(Ticket::take(&p, ip("10.0.0.1"), gauge(&seen)).is_err());
        let second = Ticket::take(&p, ip("10.0.0.2"), gauge(&seen)).unwrap();
        assert!(first.evict.is_raised());
        drop(first);
        assert_eq!(seen.get(), 1, "the evicted ticket had no place left");
        drop(second);
        assert_eq!(seen.get(), 0);
        assert!(p.borrow().is_empty());
    }
}
