//! The workloads of a snapshot, by uid, in a persistent map with 8-byte keys.
//!
//! A workload's key is the (per-process seeded) hash of its uid ([`uid_hash`]); the rare uid whose
//! hash is taken goes to the next free key (linear probing over the `u64` space), and a
//! removal shifts displaced entries back so that a lookup can stop at the first free
//! key. Keys are therefore private: they can change when a colliding workload goes.
//! Compared with a key holding the uid string, an entry is 16 bytes smaller and a
//! B-tree step compares integers.
//!
//! Each entry also records the workload's position in the endpoint vector of each
//! service it is a healthy endpoint of, so that removing it is O(log n).

use std::sync::Arc;

use serde::Serialize;

use super::key::{Uid, UidRef};
use super::PMap;
use crate::model::Workload;

/// The home key of `uid`.
#[cfg(not(test))]
fn home(uid: &str) -> u64 {
    super::key::uid_hash(uid)
}

/// The home key of `uid`; in tests a uid `#N:...` has home `N`, to force collisions.
#[cfg(test)]
fn home(uid: &str) -> u64 {
    uid.strip_prefix('#')
        .and_then(|r| r.split_once(':'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| super::key::uid_hash(uid))
}

/// No position in an endpoint vector.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// Positions in endpoint vectors, one per service of the workload's profile (same
/// order), as the builder handles them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slots {
    /// A workload with at most one service.
    One(u32),
    /// Several services.
    Many(Vec<u32>),
}

impl Slots {
    /// `n` services, none with a position yet.
    pub(crate) fn none(n: usize) -> Self {
        if n <= 1 {
            Slots::One(NO_SLOT)
        } else {
            Slots::Many(vec![NO_SLOT; n])
        }
    }

    /// The position for service number `i` (`NO_SLOT` when out of range).
    pub(crate) fn get(&self, i: usize) -> u32 {
        match self {
            Slots::One(s) if i == 0 => *s,
            Slots::One(_) => NO_SLOT,
            Slots::Many(v) => v.get(i).copied().unwrap_or(NO_SLOT),
        }
    }

    /// Sets the position for service number `i` (ignored when out of range).
    pub(crate) fn set(&mut self, i: usize, slot: u32) {
        match self {
            Slots::One(s) if i == 0 => *s = slot,
            Slots::One(_) => {}
            Slots::Many(v) => {
                if let Some(s) = v.get_mut(i) {
                    *s = slot;
                }
            }
        }
    }
}

/// One workload and its endpoint positions, as the builder sees it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) workload: Arc<Workload>,
    pub(crate) slots: Slots,
}

/// One workload as stored: 16 bytes. The position for its first service is here;
/// those for further services (rare) are in [`Workloads::more`].
#[derive(Debug, Clone)]
struct Stored {
    workload: Arc<Workload>,
    slot: u32,
}

/// Workloads by uid: O(1) clone, O(log n) lookup, insert and remove.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    map: PMap<u64, Stored>,
    /// Positions for the second and further services of workloads with several.
    more: PMap<Uid, Vec<u32>>,
    /// How many entries are not at their home key. While there is none (almost
    /// always), a removal needs no backward shift.
    displaced: usize,
}

impl Workloads {
    /// The number of workloads.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The workload with this uid.
    pub fn get(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.find(uid).map(|(_, e)| &e.workload)
    }

    /// Whether a workload has this uid.
    pub fn contains_key(&self, uid: &str) -> bool {
        self.find(uid).is_some()
    }

    /// Every workload, in a fixed order (by uid hash).
    pub fn values(&self) -> impl Iterator<Item = &Arc<Workload>> + '_ {
        self.map.values().map(|e| &e.workload)
    }

    /// Every (uid, workload), in the order of [`Workloads::values`].
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Workload>)> + '_ {
        self.values().map(|w| (&*w.uid, w))
    }

    /// The key and stored entry of `uid`.
    fn find(&self, uid: &str) -> Option<(u64, &Stored)> {
        let mut key = home(uid);
        loop {
            let e = self.map.get(&key)?;
            if *e.workload.uid == *uid {
                return Some((key, e));
            }
            key = key.wrapping_add(1);
        }
    }

    /// The entry of `uid`.
    pub(crate) fn entry(&self, uid: &str) -> Option<Entry> {
        let (_, e) = self.find(uid)?;
        Some(self.assemble(e.clone()))
    }

    fn assemble(&self, e: Stored) -> Entry {
        let slots = if e.workload.services.len() > 1 {
            let mut all = vec![e.slot];
            if let Some(more) = self.more.get(&UidRef::new(&e.workload.uid)) {
                all.extend_from_slice(more);
            }
            all.resize(e.workload.services.len(), NO_SLOT);
            Slots::Many(all)
        } else {
            Slots::One(e.slot)
        };
        Entry {
            workload: e.workload,
            slots,
        }
    }

    /// Sets the position of `uid` for its service number `i`.
    pub(crate) fn set_slot(&mut self, uid: &str, i: usize, slot: u32) {
        if i > 0 {
            if let Some(more) = self.more.get_mut(&UidRef::new(uid)) {
                if let Some(s) = more.get_mut(i - 1) {
                    *s = slot;
                }
            }
            return;
        }
        let mut key = home(uid);
        while let Some(e) = self.map.get_mut(&key) {
            if *e.workload.uid == *uid {
                e.slot = slot;
                return;
            }
            key = key.wrapping_add(1);
        }
    }

    /// Adds or replaces the entry of `entry.workload.uid`.
    pub(crate) fn insert(&mut self, entry: Entry) {
        let Entry { workload, slots } = entry;
        let slot = slots.get(0);
        match slots {
            Slots::Many(v) if v.len() > 1 => {
                self.more
                    .insert(Uid::new(workload.uid.clone()), v[1..].to_vec());
            }
            _ => {
                if !self.more.is_empty() {
                    self.more.remove(&UidRef::new(&workload.uid));
                }
            }
        }
        let home = home(&workload.uid);
        let uid = workload.uid.clone();
        let mut stored = Stored { workload, slot };
        let mut key = home;
        // Insert first and check what was there: one descent in the usual case.
        loop {
            match self.map.insert(key, stored) {
                None => {
                    self.displaced += usize::from(key != home);
                    return;
                }
                Some(prev) if prev.workload.uid == uid => return,
                Some(prev) => {
                    // Another uid holds this key: put it back and probe further.
                    match self.map.insert(key, prev) {
                        Some(mine) => stored = mine,
                        None => return,
                    }
                    key = key.wrapping_add(1);
                }
            }
        }
    }

    /// Removes the entry of `uid` and returns it.
    pub(crate) fn remove(&mut self, uid: &str) -> Option<Entry> {
        let home = home(uid);
        let mut key = home;
        // Remove first and check what was there: one descent in the usual case.
        let removed = loop {
            let e = self.map.remove(&key)?;
            if *e.workload.uid == *uid {
                break e;
            }
            self.map.insert(key, e);
            key = key.wrapping_add(1);
        };
        let entry = self.assemble(removed);
        if !self.more.is_empty() {
            self.more.remove(&UidRef::new(uid));
        }
        if key != home {
            self.displaced = self.displaced.saturating_sub(1);
        }
        if self.displaced > 0 {
            self.shift_back(key);
        }
        Some(entry)
    }

    /// Backward shift after freeing `hole`: an entry displaced past it moves into it,
    /// so that every entry stays reachable from its home without crossing a free key.
    fn shift_back(&mut self, mut hole: u64) {
        let mut next = hole.wrapping_add(1);
        while let Some(e) = self.map.get(&next) {
            let home = home(&e.workload.uid);
            if next.wrapping_sub(home) >= next.wrapping_sub(hole) {
                if let Some(e) = self.map.remove(&next) {
                    self.map.insert(hole, e);
                }
                if hole == home {
                    self.displaced = self.displaced.saturating_sub(1);
                }
                hole = next;
            }
            next = next.wrapping_add(1);
        }
    }
}

impl Serialize for Workloads {
    /// A map of uid → workload, as config dumps show it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkloadProfile;

    fn entry(uid: &str) -> Entry {
        Entry {
            workload: Arc::new(Workload::new(
                uid.into(),
                uid,
                Arc::new(WorkloadProfile::default()),
            )),
            slots: Slots::none(1),
        }
    }

    fn keys(w: &Workloads) -> Vec<(u64, String)> {
        w.map
            .iter()
            .map(|(k, e)| (*k, e.workload.uid.to_string()))
            .collect()
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut w = Workloads::default();
        w.insert(entry("a"));
        w.insert(entry("b"));
        assert_eq!(w.len(), 2);
        assert_eq!(&*w.get("a").unwrap().uid, "a");
        w.insert(entry("a"));
        assert_eq!(w.len(), 2);
        assert!(w.remove("a").is_some());
        assert!(w.get("a").is_none());
        assert!(w.remove("a").is_none());
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn colliding_uids_are_probed_and_found() {
        let mut w = Workloads::default();
        for uid in ["#5:a", "#5:b", "#6:c", "#5:d"] {
            w.insert(entry(uid));
        }
        assert_eq!(
            keys(&w),
            [(5, "#5:a"), (6, "#5:b"), (7, "#6:c"), (8, "#5:d")].map(|(k, u)| (k, u.to_string()))
        );
        for uid in ["#5:a", "#5:b", "#6:c", "#5:d"] {
            assert_eq!(&*w.get(uid).unwrap().uid, uid);
        }
        assert!(w.get("#5:e").is_none());
        assert!(w.get("#9:a").is_none());
        // Replacing a displaced uid keeps its key.
        w.insert(entry("#5:d"));
        assert_eq!(w.len(), 4);
        assert_eq!(w.find("#5:d").unwrap().0, 8);
    }

    #[test]
    fn removal_shifts_displaced_entries_back() {
        let mut w = Workloads::default();
        for uid in ["#5:a", "#5:b", "#6:c", "#5:d", "#9:e"] {
            w.insert(entry(uid));
        }
        // keys: a 5, b 6, c 7, d 8, e 9
        assert!(w.remove("#5:a").is_some());
        assert_eq!(
            keys(&w),
            [(5, "#5:b"), (6, "#6:c"), (7, "#5:d"), (9, "#9:e")].map(|(k, u)| (k, u.to_string()))
        );
        // "c" sits at its home: removing "b" moves "d" (home 5) but never "c" before 6.
        assert!(w.remove("#5:b").is_some());
        assert_eq!(
            keys(&w),
            [(5, "#5:d"), (6, "#6:c"), (9, "#9:e")].map(|(k, u)| (k, u.to_string()))
        );
        for uid in ["#5:d", "#6:c", "#9:e"] {
            assert_eq!(&*w.get(uid).unwrap().uid, uid);
        }
    }

    #[test]
    fn probing_wraps_around_the_key_space() {
        let mut w = Workloads::default();
        let top = u64::MAX;
        for uid in [format!("#{top}:a"), format!("#{top}:b")] {
            w.insert(entry(&uid));
        }
        assert_eq!(w.find(&format!("#{top}:b")).unwrap().0, 0);
        assert!(w.remove(&format!("#{top}:a")).is_some());
        assert_eq!(w.find(&format!("#{top}:b")).unwrap().0, top);
    }

    #[test]
    fn positions_of_further_services_survive_insert_set_and_remove() {
        use crate::model::NamespacedHostname;
        let profile = WorkloadProfile {
            services: ["a/x", "a/y", "a/z"]
                .iter()
                .map(|k| k.parse::<NamespacedHostname>().unwrap())
                .collect(),
            ..Default::default()
        };
        let wl = Arc::new(Workload::new("m".into(), "m", Arc::new(profile)));
        let mut w = Workloads::default();
        w.insert(Entry {
            workload: wl.clone(),
            slots: Slots::Many(vec![1, 2, 3]),
        });
        w.set_slot("m", 2, 9);
        w.set_slot("m", 0, 7);
        let e = w.entry("m").unwrap();
        assert_eq!((e.slots.get(0), e.slots.get(1), e.slots.get(2)), (7, 2, 9));
        // Replaced by a one-service entry: the further positions go.
        w.insert(entry("m"));
        assert!(w.more.is_empty());
        w.insert(Entry {
            workload: wl,
            slots: Slots::Many(vec![1, 2, 3]),
        });
        let e = w.remove("m").unwrap();
        assert_eq!(e.slots.get(2), 3);
        assert!(w.more.is_empty() && w.is_empty());
    }

    #[test]
    fn slots_for_one_and_many_services() {
        let mut one = Slots::none(1);
        assert_eq!(one.get(0), NO_SLOT);
        one.set(0, 7);
        one.set(3, 9);
        assert_eq!(one.get(0), 7);
        assert_eq!(one.get(3), NO_SLOT);
        let mut many = Slots::none(3);
        many.set(2, 5);
        assert_eq!(
            (many.get(0), many.get(2), many.get(5)),
            (NO_SLOT, 5, NO_SLOT)
        );
    }

    #[test]
    fn an_entry_at_its_home_across_the_wrap_is_not_moved_by_a_shift() {
        let top = u64::MAX;
        let mut w = Workloads::default();
        // a and b both start at the top key; c's home is 0, where b ends up after
        // wrapping, so c goes to 1. Removing a shifts b back to the top; c then moves
        // back home (0). A shift that mistook wrapped keys for far ones would move c
        // past its home, or leave it where no lookup from 0 reaches it.
        for uid in [format!("#{top}:a"), format!("#{top}:b"), "#0:c".to_string()] {
            w.insert(entry(&uid));
        }
        assert_eq!(
            keys(&w),
            [
                (0, "#18446744073709551615:b"),
                (1, "#0:c"),
                (top, "#18446744073709551615:a")
            ]
            .map(|(k, u)| (k, u.to_string()))
        );
        assert!(w.remove(&format!("#{top}:a")).is_some());
        assert_eq!(
            keys(&w),
            [(0, "#0:c"), (top, "#18446744073709551615:b")].map(|(k, u)| (k, u.to_string()))
        );
        assert_eq!(w.displaced, 0);
    }

    proptest::proptest! {
        /// Any sequence of inserts and removes of colliding uids (homes packed around
        /// the wrap of the key space) keeps the index equal to a plain map: every uid
        /// found, none extra, and the displaced count exact.
        #[test]
        fn colliding_inserts_and_removes_match_a_plain_map(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..6, 0u8..4), 1..200)
        ) {
            let mut w = Workloads::default();
            let mut model = std::collections::BTreeSet::new();
            for (insert, at, name) in ops {
                // Homes top-2 ..= top and 0 ..= 2: clusters cross the wrap.
                let uid = format!("#{}:{name}", at.wrapping_sub(3));
                if insert {
                    w.insert(entry(&uid));
                    model.insert(uid);
                } else {
                    proptest::prop_assert_eq!(w.remove(&uid).is_some(), model.remove(&uid));
                }
                proptest::prop_assert_eq!(w.len(), model.len());
                for uid in &model {
                    proptest::prop_assert!(w.get(uid).is_some(), "{} lost", uid);
                }
                let displaced = w
                    .map
                    .iter()
                    .filter(|(k, e)| **k != home(&e.workload.uid))
                    .count();
                proptest::prop_assert_eq!(w.displaced, displaced);
            }
        }
    }
}
